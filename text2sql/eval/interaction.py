"""Multi-turn scores as the official SParC / CoSQL evaluation (test-suite-sql-eval's evaluation.py) gives them.

*Question match* is the per-turn accuracy (the usual EX / EM over every turn); *interaction match* counts an
interaction right when all of its turns are (its ``joint_all``); per-turn-position accuracy uses its buckets
``turn 1`` .. ``turn 4`` and ``turn > 4``. Gold and prediction files separate interactions with a blank line
(a file without blank lines is one Spider-style session). Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from text2sql.errors import UserError

TURN_BUCKETS = ("1", "2", "3", "4", "5+")  # the official "turn 1" .. "turn 4", "turn > 4"
INTERACTION = {"ex": "val/interaction_ex", "em": "val/interaction_em"}  # logged names (question match is
TURN = {"ex": "val/turn_ex/{}", "em": "val/turn_em/{}"}                # val/execution_accuracy, val/exact_match)


def turn_bucket(turn: int) -> str:
    """The bucket of a 0-based turn position."""
    return TURN_BUCKETS[min(turn, len(TURN_BUCKETS) - 1)]


def turn_positions(interactions: Sequence[int]) -> list[int]:
    """0-based position of each turn inside its interaction (turns of one interaction are consecutive)."""
    out: list[int] = []
    for k, n in enumerate(interactions):
        out.append(out[-1] + 1 if k and interactions[k - 1] == n else 0)
    return out


def interaction_scores(correct: Sequence[bool], interactions: Sequence[int], kind: str) -> dict[str, float]:
    """Interaction match and per-turn-position accuracy of one kind ("ex" or "em"), keyed by logged name."""
    if len(correct) != len(interactions):
        raise ValueError(f"{len(correct)} verdicts for {len(interactions)} turns")
    whole: dict[int, bool] = {}
    buckets: dict[str, list[bool]] = {}
    for ok, n, pos in zip(correct, interactions, turn_positions(interactions)):
        whole[n] = whole.get(n, True) and bool(ok)
        buckets.setdefault(turn_bucket(pos), []).append(bool(ok))
    out = {INTERACTION[kind]: sum(whole.values()) / len(whole) if whole else 0.0}
    for bucket in TURN_BUCKETS:
        if bucket in buckets:
            out[TURN[kind].format(bucket)] = sum(buckets[bucket]) / len(buckets[bucket])
    return out


def read_sessions(path: str | Path, what: str = "gold") -> list[list[str]]:
    """The non-empty lines of a file grouped into sessions at blank lines, as the official evaluator reads
    them (the last session needs no trailing blank line; several blank lines in a row make empty sessions)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    sessions: list[list[str]] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            current.append(line.strip())
        else:
            sessions.append(current)
            current = []
    if current:
        sessions.append(current)
    return sessions


def is_multi_turn(path: str | Path) -> bool:
    """A gold file with more than one session (blank lines between interactions)."""
    return len(read_sessions(path)) > 1


def align_sessions(gold_path: str | Path, pred_path: str | Path) -> tuple[list[str], list[int]]:
    """The predictions, flattened in gold order, and each turn's interaction number; a session whose lengths
    differ (the official tool would silently score a truncated zip) is one line naming it."""
    gold, pred = read_sessions(gold_path), read_sessions(pred_path, "prediction")
    if len(gold) != len(pred):
        raise UserError(f"{gold_path} has {len(gold)} interactions, {pred_path} has {len(pred)} "
                        "(interactions are separated by one blank line in both files)")
    flat, ids = [], []
    for n, (g, p) in enumerate(zip(gold, pred)):
        if not g:
            raise UserError(f"{gold_path}: interaction {n + 1} has no turns (two blank lines in a row)")
        if len(g) != len(p):
            raise UserError(f"interaction {n + 1}: {len(g)} gold turns, {len(p)} predicted turns in {pred_path}")
        flat += [line.split("\t")[0].strip() for line in p]
        ids += [n] * len(g)
    return flat, ids


def pred_lines(preds: Sequence[str], interactions: Sequence[int]) -> str:
    """A prediction file in the multi-turn layout: one SQL per line, a blank line after each interaction (an
    empty prediction is written as "SELECT", which fails like the empty query, so the layout survives)."""
    return sessions_text([" ".join(p.split()) or "SELECT" for p in preds], interactions)


def sessions_text(lines: Sequence[str], interactions: Sequence[int]) -> str:
    """One line each, a blank line after each interaction's last (the official multi-turn file layout)."""
    out = []
    for k, (line, n) in enumerate(zip(lines, interactions, strict=True)):
        out.append(line + "\n")
        if k + 1 == len(lines) or interactions[k + 1] != n:
            out.append("\n")
    return "".join(out)


def interaction_table(interactions: Sequence[int], ex: Sequence[bool] | None, em: Sequence[bool] | None):
    """The official multi-turn rows as a rich Table: count, execution and/or exact match for question match,
    interaction match (joint_all) and each turn position."""
    from rich.table import Table

    positions = [turn_bucket(p) for p in turn_positions(interactions)]
    present = [b for b in TURN_BUCKETS if b in positions]
    table = Table(title="MULTI-TURN: question match, interaction match, per turn")
    table.add_column("")
    for name in ("question", "interaction", *(f"turn {b}" for b in present)):
        table.add_column(name, justify="right")
    table.add_row("count", str(len(interactions)), str(len(set(interactions))),
                  *(str(positions.count(b)) for b in present))
    for label, kind, correct in (("execution", "ex", ex), ("exact match", "em", em)):
        if correct is None:
            continue
        scores = interaction_scores(correct, interactions, kind)
        cells = [sum(map(bool, correct)) / len(correct), scores[INTERACTION[kind]],
                 *(scores[TURN[kind].format(b)] for b in present)]
        table.add_row(label, *(f"{x:.3f}" for x in cells))
    return table
