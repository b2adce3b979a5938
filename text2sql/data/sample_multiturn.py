"""The generated sample in SParC's, CoSQL's or Chase's layout: interactions with follow-up turns.

Built from the databases the Spider-layout sample writes (``text2sql.data.sample.generate_sample``), read back
through tables.json and SQLite only. Each interaction starts with a list question and narrows it down with
follow-ups whose SQL depends on the earlier turns ("List the name of all students." / "and only those older
than 30?" / "How many of them are there?"), so a model must read the history to answer. ``text2sql sample
--layout sparc --out DIR`` writes one; ``python train.py dataset=sparc dataset.root=DIR`` trains on it.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import tempfile
from pathlib import Path

from text2sql.data.multiturn import LAYOUTS, MultiTurnDataset, write_gold
from text2sql.data.sample import generate_sample
from text2sql.data.cache import atomic_dir


def _columns(entry: dict) -> dict[str, dict[str, list[str]]]:
    """Per table: its text and number columns that are no key (what questions may name)."""
    keys = set(entry["primary_keys"]) | {i for fk in entry["foreign_keys"] for i in fk}
    out = {t: {"text": [], "number": []} for t in entry["table_names_original"]}
    for i, ((t, name), kind) in enumerate(zip(entry["column_names_original"], entry["column_types"])):
        if t >= 0 and i not in keys and kind in ("text", "number"):
            out[entry["table_names_original"][t]][kind].append(name)
    return {t: c for t, c in out.items() if len(c["text"]) >= 2 and c["number"]}


def _words(column: str) -> str:
    return column.replace("_", " ")


def _above(column: str, value) -> str:
    return f"older than {value}" if column == "age" else f"with {_words(column)} above {value}"


def _interaction(rng: random.Random, db_id: str, entry: dict, conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """2 to 4 turns on one table; every query returns at least one row."""
    table, cols = rng.choice(sorted(_columns(entry).items()))
    name, other = cols["text"][0], rng.choice(cols["text"][1:])
    num = rng.choice(cols["number"])
    values = sorted({v for (v,) in conn.execute(f"SELECT {num} FROM {table} WHERE {num} IS NOT NULL")})
    value = values[rng.randrange(max(1, len(values) * 2 // 3))]
    where = f"FROM {table} WHERE {num} > {value}"
    turns = [(f"List the {_words(name)} of all {table}s.", f"SELECT {name} FROM {table}"),
             (f"and only those {_above(num, value)}?", f"SELECT {name} {where}")]
    third = rng.choice(["count", "sort", "also"])
    if third == "count":
        turns.append(("How many of them are there?", f"SELECT count(*) {where}"))
    elif third == "sort":
        turns.append((f"Sort them by {_words(num)}, highest first.", f"SELECT {name} {where} ORDER BY {num} DESC"))
    else:
        turns.append((f"Also show their {_words(other)}.", f"SELECT {name}, {other} {where}"))
        if rng.random() < 0.5:
            (pick,) = conn.execute(f"SELECT {other} {where} ORDER BY random() LIMIT 1").fetchone()
            turns.append((f"Which of them have {_words(other)} {pick}?",
                          f"SELECT {name}, {other} {where} AND {other} = '{str(pick).replace(chr(39), chr(39) * 2)}'"))
    return turns[: rng.choice([2, 3, 3, 4])]


def _interactions(rng: random.Random, n: int, root: Path, exclude: set) -> list[dict]:
    entries = {e["db_id"]: e for e in json.loads((root / "tables.json").read_text(encoding="utf-8"))}
    conns = {db: sqlite3.connect(f"file:{root / 'database' / db / f'{db}.sqlite'}?mode=ro", uri=True)
             for db in entries}
    out, seen, attempts = [], set(exclude), 0
    try:
        while len(out) < n:
            attempts += 1
            if attempts > n * 200 + 1000:
                raise RuntimeError(f"could only generate {len(out)} distinct interactions of {n}; lower the count")
            db_id = rng.choice(sorted(entries))
            turns = _interaction(rng, db_id, entries[db_id], conns[db_id])
            key = tuple(q for q, _ in turns)
            if key in seen:
                continue
            seen.add(key)
            interaction = [{"utterance": q, "query": sql} for q, sql in turns]
            out.append({"database_id": db_id, "interaction": interaction, "final": dict(interaction[-1])})
    finally:
        for conn in conns.values():
            conn.close()
    return out


def generate_multiturn_sample(out_dir: str | Path, layout: str = "sparc", seed: int = 0, n_train: int = 600,
                              n_dev: int = 60) -> Path:
    """Write `n_train` / `n_dev` interactions in `layout` (text2sql.data.multiturn.LAYOUTS) into `out_dir`."""
    spec = LAYOUTS[layout]
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch, atomic_dir(out_dir) as tmp:
        base = generate_sample(Path(scratch) / "spider", seed=seed, n_train=1, n_dev=1)
        shutil.copytree(base / "database", tmp / "database")
        (tmp / spec.tables).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "tables.json", tmp / spec.tables)
        rng = random.Random(seed)
        dev = _interactions(rng, n_dev, base, set())
        train = _interactions(rng, n_train, base, {tuple(t["utterance"] for t in d["interaction"]) for d in dev})
        for names, data in ((spec.train, train), (spec.dev, dev)):
            path = tmp / names[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        dataset = MultiTurnDataset(tmp, layout)
        write_gold(tmp / spec.dev_gold, dataset.examples("dev"), dataset.interaction_ids("dev"))
    return out_dir
