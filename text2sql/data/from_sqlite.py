"""Spider's layout from a user's SQLite files and (db_id, question, query) pairs: `prepare --from-sqlite`.

Input: DBDIR holding ``<db_id>.sqlite`` (or ``.sqlite3`` / ``.db``) files, flat or in Spider's
``<db_id>/<db_id>.sqlite``; a pairs file in JSONL or CSV with ``db_id``, ``question`` and ``query``.
Output: ``tables.json`` (from each file, `sqlite_schema`), ``train_spider.json`` / ``dev.json``,
``train_gold.sql`` / ``dev_gold.sql`` and ``database/<db_id>/<db_id>.sqlite``: what `dataset=spider
dataset.root=OUT` trains on. Every gold query is run first on a connection opened by the evaluator's guard
(`sql.sqlite_guard`: read-only, writes refused, a deadline), so a query that cannot run never becomes a
training target.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from text2sql.data.sqlite_schema import is_sqlite_file, read_schema, tables_json_entry
from text2sql.data.spider import SpiderSchema
from text2sql.errors import UserError
from text2sql.sql.sqlite_guard import open_readonly

DB_SUFFIXES = (".sqlite", ".sqlite3", ".db")
PAIR_KEYS = ("db_id", "question", "query")
SPLIT_BY = ("random", "database")

Checker = Callable[[Path, str], "str | None"]  # (database file, SQL) -> error message, None when it runs


@dataclass(frozen=True)
class Pair:
    db_id: str
    question: str
    query: str
    where: str  # "file:line", for error lists


def find_databases(db_dir: Path) -> dict[str, Path]:
    """db_id -> file for every database file in DBDIR (flat or one level down); duplicates and non-SQLite
    files with a database suffix are one-line errors."""
    if not db_dir.is_dir():
        raise UserError(f"--from-sqlite: {db_dir} is not a directory")
    found: dict[str, Path] = {}
    for path in sorted([*db_dir.iterdir(), *(p for d in db_dir.iterdir() if d.is_dir() for p in d.iterdir())]):
        if not (path.is_file() and path.suffix.lower() in DB_SUFFIXES):
            continue
        if not is_sqlite_file(path):
            raise UserError(f"{path} is not an SQLite database (no 'SQLite format 3' header); remove it from "
                            f"{db_dir} or replace it with the database file")
        db_id = path.stem
        if db_id in found:
            raise UserError(f"duplicate database id {db_id!r}: {found[db_id]} and {path}; "
                            f"each file name (without its suffix) must be unique")
        found[db_id] = path
    if not found:
        raise UserError(f"no SQLite files ({', '.join(DB_SUFFIXES)}) in {db_dir} or its subdirectories")
    return found


def _pair(row: object, where: str) -> Pair:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with {', '.join(PAIR_KEYS)}, got {type(row).__name__}")
    missing = [k for k in PAIR_KEYS if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        raise UserError(f"{where}: missing or empty {', '.join(missing)} (each pair needs {', '.join(PAIR_KEYS)})")
    return Pair(row["db_id"].strip(), row["question"].strip(), row["query"].strip(), where)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from JSONL (one object a line; blank lines skipped) or CSV (a header row naming the keys)."""
    if not path.is_file():
        raise UserError(f"--pairs: file not found: {path}")
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    pairs: list[Pair] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        missing = [k for k in PAIR_KEYS if k not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}:1: the CSV header lacks {', '.join(missing)} (it needs {', '.join(PAIR_KEYS)})")
        for row in reader:
            pairs.append(_pair(row, f"{path}:{reader.line_num}"))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{n}: not a JSON object ({err.msg}); --pairs takes JSONL or .csv") from None
            pairs.append(_pair(row, f"{path}:{n}"))
    if not pairs:
        raise UserError(f"{path} holds no pairs")
    return pairs


def gold_checker(timeout: float) -> Checker:
    """(database, SQL) -> error or None: the query runs to its last row under the guard's authorizer and deadline."""
    conns: dict[Path, tuple] = {}

    def check(db: Path, sql: str) -> str | None:
        if db not in conns:
            conns[db] = open_readonly(db, heap_limit=None)
        conn, guard = conns[db]
        guard.refused, guard.deadline = None, time.monotonic() + timeout
        try:
            cur = conn.execute(sql)
            if cur.description is None:
                return "write refused: not a read-only query"
            while cur.fetchmany(4096):
                pass
            return None if guard.refused is None else f"write refused: {guard.refused}"
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as err:
            if guard.refused is not None:
                return f"write refused: {guard.refused}"
            if time.monotonic() > guard.deadline:
                return f"timeout: still running after {timeout:g} s"
            return str(err) or type(err).__name__
        finally:
            guard.deadline = math.inf
            if conn.in_transaction:
                conn.rollback()

    return check


def check_pairs(pairs: list[Pair], databases: dict[str, Path], check: Checker) -> list[tuple[Pair, str]]:
    """Unknown databases stop at once (one line); each gold query is run: the (pair, error) that failed."""
    for pair in pairs:
        if pair.db_id not in databases:
            known = ", ".join(sorted(databases)[:8]) + (", ..." if len(databases) > 8 else "")
            raise UserError(f"{pair.where}: db_id {pair.db_id!r} is not a database in the --from-sqlite dir "
                            f"(found: {known})")
    failed = []
    for pair in pairs:
        error = check(databases[pair.db_id], pair.query)
        if error is not None:
            failed.append((pair, error))
    return failed


def split_pairs(pairs: list[Pair], dev_fraction: float, by: str, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, dev), each in input order; `database` keeps every database on one side (Spider's rule)."""
    if not 0 < dev_fraction < 1:
        raise UserError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    rng = random.Random(seed)
    target = max(1, round(dev_fraction * len(pairs)))
    if by == "random":
        order = list(range(len(pairs)))
        rng.shuffle(order)
        dev_idx = set(order[:target])
    else:
        db_ids = sorted({p.db_id for p in pairs})
        rng.shuffle(db_ids)
        dev_dbs: set[str] = set()
        count = 0
        for db_id in db_ids[:-1]:  # the last one always stays in train
            if count >= target:
                break
            dev_dbs.add(db_id)
            count += sum(p.db_id == db_id for p in pairs)
        dev_idx = {i for i, p in enumerate(pairs) if p.db_id in dev_dbs}
    train = [p for i, p in enumerate(pairs) if i not in dev_idx]
    dev = [p for i, p in enumerate(pairs) if i in dev_idx]
    if not train or not dev:
        hint = " (--split-by database needs pairs on two databases or more)" if by == "database" else ""
        raise UserError(f"cannot split {len(pairs)} pairs into a non-empty train and dev{hint}")
    return train, dev


def _examples(pairs: list[Pair]) -> list[dict]:
    return [{"db_id": p.db_id, "question": p.question, "query": p.query} for p in pairs]


def _gold(pairs: list[Pair]) -> str:
    return "".join(" ".join(p.query.split()) + f"\t{p.db_id}\n" for p in pairs)


def write_layout(out: Path, schemas: list[SpiderSchema], databases: dict[str, Path], train: list[Pair],
                 dev: list[Pair]) -> None:
    """Build the whole layout beside OUT, then move each entry in: an error leaves OUT as it was."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = {"tables.json": [tables_json_entry(s) for s in schemas], "train_spider.json": _examples(train),
                 "dev.json": _examples(dev)}
        for name, data in files.items():
            (tmp / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "train_gold.sql").write_text(_gold(train), encoding="utf-8")
        (tmp / "dev_gold.sql").write_text(_gold(dev), encoding="utf-8")
        for db_id, path in databases.items():
            (tmp / "database" / db_id).mkdir(parents=True)
            shutil.copyfile(path, tmp / "database" / db_id / f"{db_id}.sqlite")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; OUT should look like any mkdir'd dir
        if not out.exists():
            os.replace(tmp, out)
            return
        _move_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(tmp: Path, out: Path) -> None:
    """Move what `write_layout` built into an existing OUT (`--overwrite`): its five files replace theirs, and each
    database/<db_id> replaces only the database of that name; nothing else in OUT is touched or deleted."""
    (out / "database").mkdir(exist_ok=True)
    for db in sorted((tmp / "database").iterdir()):
        target = out / "database" / db.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(db, target)
    for entry in sorted(tmp.iterdir()):
        if entry.name != "database":
            os.replace(entry, out / entry.name)


def check_out(out: Path, overwrite: bool) -> None:
    """An existing, non-empty OUT is refused unless `overwrite`: a dataset there would be mixed with this one."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not overwrite):
        what = "is a file" if out.is_file() else "exists and is not empty"
        raise UserError(f"--out {out} {what}; pick a new directory" + ("" if out.is_file() else
                        " or pass --overwrite (replaces tables.json, train_spider.json, dev.json, the gold files and "
                        "the databases of the same name; deletes nothing else)"))


def prepare_from_sqlite(db_dir: Path, pairs_file: Path, out: Path, check: Checker, *, dev_fraction: float = 0.2,
                        split_by: str = "random", seed: int = 0, drop_invalid: bool = False,
                        report: Callable[[str], None] = print, overwrite: bool = False
                        ) -> tuple[list[Pair], list[Pair], list]:
    """Read, check, split, write; returns (train, dev, dropped (pair, error) list). Raises UserError with the
    failures listed through `report` first when a gold query does not run and drop_invalid is off, and before
    any work when OUT exists with something in it and `overwrite` is off (`check_out`)."""
    check_out(out, overwrite)
    databases = find_databases(db_dir)
    schemas = [read_schema(path, db_id) for db_id, path in databases.items()]
    pairs = read_pairs(pairs_file)
    failed = check_pairs(pairs, databases, check)
    for pair, error in failed:
        report(f"{pair.where}: {error}")
    if failed and not drop_invalid:
        raise UserError(f"{len(failed)} of {len(pairs)} gold queries do not run (listed above); fix them or pass "
                        f"--drop-invalid to leave them out")
    bad = {id(p) for p, _ in failed}
    train, dev = split_pairs([p for p in pairs if id(p) not in bad], dev_fraction, split_by, seed)
    write_layout(out, schemas, databases, train, dev)
    return train, dev, failed
