"""Distillation: which neighbours tell each gold query apart from its mutants, and the fewest that cover the most.

Every query runs through the evaluator (`eval.execute.ExecutionEvaluator`: read-only guard, timeouts, worker
processes, gold results cached) and is compared with the dataset's own rule (Spider's denotation equality or BIRD's
row sets, `eval.compare`), exactly as a prediction will be scored on the suite: a mutant is *killed* by a database
when its verdict there is anything but `correct`.

The kill matrix is filled lazily, as in the paper: candidates are tried in batches, each only on the mutants no
earlier candidate has killed; then a greedy set cover keeps, one at a time, the candidate that kills the most
mutants not yet covered (ties: the earlier candidate), until every killed mutant is covered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from text2sql.eval.execute import ExecutionEvaluator

__all__ = ["Runner", "Kills", "greedy_cover"]


class Runner:
    """The evaluator over one folder of `<name>/<name>.sqlite` databases (originals' copies and candidates)."""

    def __init__(self, root: Path, style: str, timeout: float, workers: int | None) -> None:
        self.ev = ExecutionEvaluator(root, timeout=timeout, workers=workers, style=style)

    def close(self) -> None:
        self.ev.close()

    def gold_failures(self, names: list[str], golds: list[str]) -> dict[str, str]:
        """name -> why, for the databases on which some gold query fails (an error, a timeout, too many rows)."""
        items = [(self.ev.db_file(n), g) for n in names for g in golds]
        out: dict[str, str] = {}
        for (path, gold), res in zip(items, self.ev.run_sql(items)):
            if res["status"] != "ok":
                name = Path(path).parent.name if path else "?"
                out.setdefault(name, f"{res['status']}: {res.get('error') or ''} ({gold[:60]})")
        return out

    def statuses(self, items: list[tuple[str, str, str]]) -> list[str]:
        """The verdict status of each (database name, gold, query), as the evaluator scores a prediction."""
        if not items:
            return []
        return [v.status for v in self.ev.evaluate(items, levels=[""] * len(items))]


@dataclass
class Kills:
    """Which candidate killed which mutant (indexes into the database's mutant list)."""

    by_candidate: dict[str, set[int]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # candidates in the order they were tried

    def add(self, name: str, killed: set[int]) -> None:
        self.by_candidate[name] = killed
        self.order.append(name)

    def killed(self) -> set[int]:
        return set().union(*self.by_candidate.values()) if self.by_candidate else set()

    def counts(self) -> Counter:
        """How many candidates killed each mutant."""
        return Counter(i for killed in self.by_candidate.values() for i in killed)


def try_candidates(runner: Runner, names: list[str], mutants: list[tuple[str, str, str]], alive: set[int],
                   kills: Kills, cover: int = 1) -> set[int]:
    """Run the `alive` mutants (gold, SQL, kind) on candidates `names`; record the kills; return the mutants still
    alive: killed by fewer than `cover` candidates so far."""
    order = sorted(alive)
    items = [(n, mutants[i][0], mutants[i][1]) for n in names for i in order]
    statuses = runner.statuses(items)
    for j, name in enumerate(names):
        chunk = statuses[j * len(order):(j + 1) * len(order)]
        kills.add(name, {i for i, s in zip(order, chunk) if s != "correct"})
    counts = kills.counts()
    return {i for i in alive if counts[i] < cover}


def greedy_cover(kills: Kills, cover: int = 1) -> list[str]:
    """The candidates a greedy set multicover keeps, in the order it picks them: each time the one that kills the most
    mutants still short of `cover` killers (ties: the earlier candidate), until every killed mutant has
    min(cover, its killers) of them kept."""
    need = {i: min(cover, n) for i, n in kills.counts().items()}
    chosen: list[str] = []
    rank = {name: k for k, name in enumerate(kills.order)}
    while any(need.values()):
        best = max((n for n in kills.order if n not in chosen),
                   key=lambda n: (sum(1 for i in kills.by_candidate[n] if need[i]), -rank[n]))
        chosen.append(best)
        for i in kills.by_candidate[best]:
            if need[i]:
                need[i] -= 1
    return chosen
