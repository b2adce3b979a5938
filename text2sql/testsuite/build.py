"""Build a distilled test suite for every database of a dataset, in the official test-suite layout.

Input: a dataset in any layout the project reads (Spider's, also what `prepare --from-sqlite` writes; BIRD's;
SParC's, CoSQL's, Chase's). Output (written beside OUT, renamed into place when complete)::

    OUT/database/<db_id>/<db_id>.sqlite          the original, copied (the first file, as the evaluator expects)
    OUT/database/<db_id>/<db_id>_ts001.sqlite    the kept neighbours, in the order the set cover chose them
    OUT/<split>_gold.sql                         the split's gold ("SQL<TAB>db_id"), for `text2sql evaluate`
    OUT/manifest.json                            seed, sizes and, per database, what the distillation achieved

Per database: read its schema and value pools (read-only), make `mutants` near-miss mutants of each gold query
that run on the original, try up to `per_db` candidate neighbours (a candidate on which a gold query fails is
dropped) and keep the greedy set cover. Everything is a function of the seed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from text2sql.config.paths import check_writable
from text2sql.errors import UserError
from text2sql.testsuite.distil import Kills, Runner, greedy_cover, try_candidates
from text2sql.testsuite.fill import neighbour_rows
from text2sql.testsuite.mutate import query_literals, sample_mutants
from text2sql.testsuite.schema import DbSchema, read_db, write_db

__all__ = ["BuildOptions", "build_suite", "find_databases", "open_dataset", "Distiller"]

MANIFEST_VERSION = 1
BATCH = 8  # candidates tried together (one evaluator call)
PER_KIND = 3  # mutants of one kind per gold query: no kind (column swaps, the most numerous) crowds out the rest


@dataclass(frozen=True)
class BuildOptions:
    split: str = "dev"
    per_db: int = 100  # candidate neighbours tried per database (the suite keeps the fewest that kill the most)
    seed: int = 0
    mutants: int = 20  # mutants per gold query
    cover: int = 2  # kept neighbours that must kill each mutant (where that many candidates do)
    timeout: float = 10.0
    workers: int | None = None
    progress: bool = True


def open_dataset(data: str | Path):
    """(dataset, layout) for a directory in one of the layouts the project reads; one line when it is none."""
    from text2sql.data.bird import BirdDataset
    from text2sql.data.multiturn import MultiTurnDataset
    from text2sql.data.spider import SpiderDataset

    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(f"--data {root}: directory not found")
    if (root / "dev" / "dev.json").is_file():
        return BirdDataset(root), "bird"
    if (root / "sql_state_tracking" / "cosql_dev.json").is_file():
        return MultiTurnDataset(root, "cosql"), "cosql"
    if (root / "chase_dev.json").is_file():
        return MultiTurnDataset(root, "chase"), "chase"
    if (root / "dev.json").is_file():
        try:
            first = json.loads((root / "dev.json").read_text(encoding="utf-8"))[:1]
        except (ValueError, TypeError):
            first = []
        if first and isinstance(first[0], dict) and "interaction" in first[0]:
            return MultiTurnDataset(root, "sparc"), "sparc"
        return SpiderDataset(root), "spider"
    raise UserError(f"--data {root} is not a dataset in a layout text2sql reads (Spider's dev.json + database/, "
                    "BIRD's dev/dev.json, SParC's, CoSQL's sql_state_tracking/ or Chase's chase_dev.json)")


def _splits(split: str) -> tuple[str, ...]:
    if split not in ("dev", "train", "both"):
        raise UserError(f"--split {split!r}: choose dev, train or both")
    return ("dev", "train") if split == "both" else (split,)


def find_databases(dataset, splits: tuple[str, ...]) -> tuple[dict[str, tuple[Path, list[str]]], list[str]]:
    """db_id -> (its SQLite file, its distinct gold queries in order) for every database the splits' examples
    name and that exists; and the db_ids whose file is missing."""
    found: dict[str, tuple[Path, list[str]]] = {}
    missing: list[str] = []
    for split in splits:
        for ex in dataset.examples(split):
            if ex.db_id in missing:
                continue
            if ex.db_id not in found:
                path = dataset.db_path(ex.db_id, split)
                if not path.is_file():
                    missing.append(ex.db_id)
                    continue
                found[ex.db_id] = (path, [])
            golds = found[ex.db_id][1]
            if ex.query.strip() and ex.query not in golds:
                golds.append(ex.query)
    return found, missing


class Distiller:
    """The per-database work, over one evaluator (`distil.Runner`) rooted at `root` (a `database/` folder)."""

    def __init__(self, root: Path, style: str, opts: BuildOptions) -> None:
        self.root, self.opts = root, opts
        self.runner = Runner(root, style, opts.timeout, opts.workers)

    def close(self) -> None:
        self.runner.close()

    def candidate(self, schema: DbSchema, literals: dict, tag: str, k: int) -> str:
        """Write candidate neighbour `k` (seeded by the seed, `tag` and k); returns its database name."""
        name = f"{schema.db_id}.{tag}{k:03d}"
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.sqlite"
        if path.exists():
            path.unlink()
        rng = random.Random(f"{self.opts.seed}/{schema.db_id}/{tag}/{k}")
        write_db(schema, neighbour_rows(schema, literals, rng), path)
        return name

    def mutants(self, db_id: str, schema: DbSchema, golds: list[str], seed: int, k: int,
                exclude: dict[str, set[str]] | None = None) -> tuple[list[tuple[str, str, str]], set[int]]:
        """Up to `k` mutants per gold that run on the original: [(gold, sql, kind)], and those the original kills.
        Twice `k` are drawn, so that mutants that cannot run there (or time out: they test nothing) leave room."""
        drawn: list[tuple[str, str, str]] = []
        for gi, gold in enumerate(golds):
            rng = random.Random(f"{seed}/{db_id}/mutants/{gi}")
            picks = sample_mutants(gold, schema, 2 * k, rng, (exclude or {}).get(gold, ()), per_kind=2 * PER_KIND)
            drawn += [(gold, m, kind) for kind, m in picks]
        statuses = self.runner.statuses([(db_id, g, m) for g, m, _ in drawn])
        out: list[tuple[str, str, str]] = []
        killed: set[int] = set()
        count: dict[tuple[str, ...], int] = {}
        for mutant, status in zip(drawn, statuses):
            gold, _, kind = mutant
            if status not in ("correct", "wrong_result") or count.get((gold,), 0) >= k \
                    or count.get((gold, kind), 0) >= PER_KIND:
                continue
            count[(gold,)] = count.get((gold,), 0) + 1
            count[(gold, kind)] = count.get((gold, kind), 0) + 1
            if status == "wrong_result":
                killed.add(len(out))
            out.append(mutant)
        return out, killed

    def pool(self, schema: DbSchema, literals: dict, golds: list[str], mutants: list[tuple[str, str, str]],
             alive: set[int], n: int, tag: str, cover: int = 1) -> tuple[Kills, int]:
        """Try up to `n` candidates (tagged `tag`) in batches on the mutants still alive; (kills, candidates
        dropped because a gold query failed on them). Stops early once every mutant is killed."""
        kills, dropped = Kills(), 0
        for start in range(0, n, BATCH):
            if not alive:
                break
            names = [self.candidate(schema, literals, tag, k) for k in range(start, min(n, start + BATCH))]
            bad = self.runner.gold_failures(names, golds)
            dropped += len(bad)
            for name in bad:
                shutil.rmtree(self.root / name, ignore_errors=True)
            alive = try_candidates(self.runner, [n_ for n_ in names if n_ not in bad], mutants, alive, kills,
                                   cover)
        return kills, dropped

    def build_db(self, db_id: str, source: Path, golds: list[str]) -> dict:
        """Copy the original, distil, keep the cover as `<db_id>_tsNNN.sqlite`; the database's manifest entry."""
        schema = read_db(source, db_id, self.opts.timeout)
        folder = self.root / db_id
        folder.mkdir(parents=True)
        shutil.copyfile(source, folder / f"{db_id}.sqlite")
        failing = self.runner.gold_failures([db_id], golds)  # {db_id: why} when some gold fails on the original
        ok = [g for g in golds if not self.runner.gold_failures([db_id], [g])] if failing else golds
        mutants, by_original = self.mutants(db_id, schema, ok, self.opts.seed, self.opts.mutants)
        literals = query_literals(ok, schema)
        alive = set(range(len(mutants))) - by_original
        kills, dropped = self.pool(schema, literals, ok, mutants, alive, self.opts.per_db, "cand", self.opts.cover)
        kept = greedy_cover(kills, self.opts.cover)
        sizes = []
        for j, name in enumerate(kept, 1):
            target = folder / f"{db_id}_ts{j:03d}.sqlite"
            os.replace(self.root / name / f"{name}.sqlite", target)
            sizes.append(target.stat().st_size)
        for name in kills.order:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return {"gold_queries": len(golds), "gold_failing_on_original": len(golds) - len(ok),
                "candidates_tried": len(kills.order) + dropped, "candidates_dropped_gold_failed": dropped,
                "neighbours_kept": len(kept), "neighbour_bytes": sum(sizes), "mutants": len(mutants),
                "killed_by_original": len(by_original), "killed_by_suite": len(by_original | kills.killed())}


def build_suite(data: str | Path, out: str | Path, opts: BuildOptions = BuildOptions()) -> dict:
    """Build the suite of `data`'s databases into `out` (which must not exist or be empty); returns the manifest."""
    dataset, layout = open_dataset(data)
    splits = _splits(opts.split)
    if opts.per_db < 1 or opts.mutants < 1 or opts.cover < 1:
        raise UserError("--per-db, --mutants and --cover must be at least 1")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; pick a new directory")
    dbs, missing = find_databases(dataset, splits)
    where = ", ".join(str(dataset.db_dir(s)) for s in splits)
    if not dbs:
        raise UserError(f"--data {data}: no databases found (looked for <db_id>/<db_id>.sqlite under {where} for the "
                        f"{len(missing)} databases the {'/'.join(splits)} split names)")
    if missing:
        print(f"text2sql testsuite: warning: {len(missing)} databases the split names are missing under {where} "
              f"(e.g. {missing[0]}); their questions get no suite", file=sys.stderr)
    check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _build_into(tmp, dataset, layout, dbs, missing, splits, opts)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build_into(tmp: Path, dataset, layout: str, dbs: dict, missing: list[str], splits, opts: BuildOptions) -> dict:
    root = tmp / "database"
    root.mkdir()
    start = time.monotonic()
    entries: dict[str, dict] = {}
    distiller = Distiller(root, dataset.eval_style, opts)
    try:
        with _progress(sum(len(g) for _, g in dbs.values()), opts.progress) as advance:
            for db_id, (path, golds) in dbs.items():
                advance(0, db_id)
                entries[db_id] = distiller.build_db(db_id, path, golds)
                advance(len(golds), db_id)
    finally:
        distiller.close()
    _write_gold(tmp, dataset, splits)
    manifest = _manifest(layout, dataset.eval_style, opts, entries, missing)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    t = manifest["totals"]
    print(f"test suite: {len(entries)} databases, {t['neighbours_kept']} neighbours kept of {t['candidates_tried']} "
          f"tried; mutants killed by the original alone {t['killed_by_original']}/{t['mutants']}, by the suite "
          f"{t['killed_by_suite']}/{t['mutants']} ({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return manifest


def _manifest(layout: str, style: str, opts: BuildOptions, entries: dict, missing: list[str]) -> dict:
    keys = ("gold_queries", "candidates_tried", "candidates_dropped_gold_failed", "neighbours_kept",
            "neighbour_bytes", "mutants", "killed_by_original", "killed_by_suite")
    totals = {k: sum(e[k] for e in entries.values()) for k in keys}
    return {"version": MANIFEST_VERSION, "layout": layout, "style": style, "split": opts.split, "seed": opts.seed,
            "per_db": opts.per_db, "mutants_per_query": opts.mutants, "cover": opts.cover, "databases_missing": sorted(missing),
            "totals": totals, "databases": entries}


def _write_gold(tmp: Path, dataset, splits) -> None:
    """Each split's gold file ("SQL<TAB>db_id"; multi-turn: a blank line after each interaction)."""
    for split in splits:
        examples = dataset.examples(split)
        if hasattr(dataset, "interaction_ids"):
            from text2sql.data.multiturn import write_gold

            write_gold(tmp / f"{split}_gold.sql", examples, dataset.interaction_ids(split))
        else:
            text = "".join(f"{' '.join(ex.query.split())}\t{ex.db_id}\n" for ex in examples)
            (tmp / f"{split}_gold.sql").write_text(text, encoding="utf-8")


class _progress:
    """A rich progress bar (stderr) over gold queries with the current database and an ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("test suite {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self.advance

    def advance(self, n: int, db_id: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=db_id)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
