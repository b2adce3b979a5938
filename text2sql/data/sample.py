"""A small text-to-SQL dataset generated from a seed, written in Spider's own layout, at Spider's difficulty mix.

Why generated: the project ships no data files, yet `python train.py` must run a real fine-tuning job
out of the box. The generator builds a few SQLite databases (four domains, a parent and a child table each,
a foreign key, realistic rows) and templated questions with gold SQL. The templates cover what Spider's
hardness levels are made of: filters and aggregates (easy); GROUP BY / HAVING, ORDER BY + LIMIT, joins and
compound conditions (medium); nested sub-queries, INTERSECT / UNION / EXCEPT and grouped rankings (hard);
and their combinations (extra). Each split holds the four levels in the proportions of Spider's dev set
(`LEVEL_SHARES`), every level measured with `text2sql.sql.hardness` (the official rules), so a per-hardness
EX table on the sample says something about the method, not only about the pipeline.

It writes `train_spider.json`, `dev.json`, `tables.json`, `dev_gold.sql`, `train_gold.sql` and
`database/<db>/<db>.sqlite`, so the Spider loader reads it unchanged. Dev questions never occur in train:
dev measures whether the model carries each template over to new tables, columns and values. Every gold
query returns at least one row on its database.

Everything is a pure function of the seed: two generations with the same seed are byte-identical.
Bump `SAMPLE_VERSION` (and the dataset fingerprint in conf/dataset/sample.yaml) when the output changes.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

from text2sql.data.cache import atomic_dir
from text2sql.data.sample_templates import TEMPLATES, Column, Ctx, Table
from text2sql.sql.hardness import hardness

SAMPLE_VERSION = 2

# Spider dev's hardness mix (248 / 446 / 174 / 166 of 1034 questions).
LEVEL_SHARES = {"easy": 248 / 1034, "medium": 446 / 1034, "hard": 174 / 1034, "extra": 166 / 1034}

FIRST = ["Alice", "Bruno", "Chen", "Dana", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kenji", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe"]
LAST = ["Novak", "Silva", "Okafor", "Larsen", "Kowalski", "Haddad", "Moreau", "Tanaka", "Rossi", "Schmidt",
        "Ivanova", "Garcia", "Nakamura", "Dubois", "Fischer", "Costa", "Berg", "Popescu"]
CITIES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Dublin", "Quebec", "Perth", "Austin", "Porto", "Riga"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Norway", "India", "Mexico", "Poland", "Egypt"]


def _names(first: list[str], last: list[str]) -> tuple[str, ...]:
    return tuple(f"{f} {l}" for f in first for l in last)


DOMAINS: dict[str, tuple[Table, ...]] = {
    "school_club": (
        Table("club", "club", "clubs", "club_id", (
            Column("club_name", "text", "name", ("Chess", "Robotics", "Drama", "Hiking", "Jazz", "Poetry",
                                                 "Rowing", "Astronomy", "Cooking", "Debate")),
            Column("location", "text", "location", tuple(CITIES)),
            Column("founded_year", "number", "founded year", low=1950, high=2020),
        ), rows=10),
        Table("student", "student", "students", "student_id", (
            Column("name", "text", "name", _names(FIRST, LAST[:8])),
            Column("age", "number", "age", low=17, high=30),
            Column("major", "text", "major", ("Math", "History", "Biology", "Physics", "Art", "Law", "Music")),
            Column("city", "text", "city", tuple(CITIES)),
        ), rows=60, parent=("club_id", "club")),
    ),
    "bookstore": (
        Table("author", "author", "authors", "author_id", (
            Column("name", "text", "name", _names(FIRST, LAST[8:])),
            Column("country", "text", "country", tuple(COUNTRIES)),
            Column("birth_year", "number", "birth year", low=1920, high=1995),
        ), rows=25),
        Table("book", "book", "books", "book_id", (
            Column("title", "text", "title", tuple(f"{a} {b}" for a in ("Silent", "Red", "Hidden", "Last", "Paper",
                                                                        "Golden", "Broken", "Winter")
                                                   for b in ("River", "Garden", "Letters", "Harbor", "Clock",
                                                         "Forest", "Mirror", "Road"))),
            Column("genre", "text", "genre", ("Mystery", "Poetry", "Fantasy", "Biography", "Science", "Travel")),
            Column("price", "number", "price", low=5, high=60),
            Column("pages", "number", "pages", low=80, high=900),
        ), rows=60, parent=("author_id", "author")),
    ),
    "company": (
        Table("department", "department", "departments", "department_id", (
            Column("dept_name", "text", "name", ("Sales", "Finance", "Research", "Support", "Legal", "Design",
                                                 "Logistics", "Marketing")),
            Column("region", "text", "region", ("North", "South", "East", "West")),
            Column("budget", "number", "budget", low=100, high=990),
            Column("floor", "number", "floor", low=1, high=12),
        ), rows=8),
        Table("employee", "employee", "employees", "employee_id", (
            Column("name", "text", "name", _names(FIRST[::-1], LAST[4:14])),
            Column("salary", "number", "salary", low=300, high=950),
            Column("title", "text", "title", ("Manager", "Engineer", "Analyst", "Clerk", "Director", "Intern")),
            Column("hire_year", "number", "hire year", low=1995, high=2024),
        ), rows=60, parent=("department_id", "department")),
    ),
    "music_festival": (
        Table("festival", "festival", "festivals", "festival_id", (
            Column("festival_name", "text", "name", tuple(f"{c} {s}" for c in CITIES[:6]
                                                          for s in ("Sound", "Beats"))),
            Column("city", "text", "city", tuple(CITIES)),
            Column("attendance", "number", "attendance", low=200, high=9000),
        ), rows=12),
        Table("band", "band", "bands", "band_id", (
            Column("band_name", "text", "name", tuple(f"The {a} {b}" for a in ("Blue", "Wild", "Iron", "Velvet",
                                                                               "Neon", "Lunar", "Stone")
                                                      for b in ("Owls", "Tides", "Foxes", "Echoes", "Pilots"))),
            Column("genre", "text", "genre", ("Rock", "Jazz", "Folk", "Pop", "Metal", "Soul")),
            Column("members", "number", "members", low=2, high=9),
            Column("formed_year", "number", "formed year", low=1970, high=2022),
        ), rows=40, parent=("festival_id", "festival")),
    ),
}


def _make_rows(rng: random.Random, tables: tuple[Table, ...]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for table in tables:
        out = []
        for i in range(1, table.rows + 1):
            row: dict = {table.key: i}
            for col in table.columns:
                if col.type == "number":
                    row[col.name] = rng.randint(col.low, col.high)
                elif col.values and len(col.values) >= table.rows and col is table.columns[0]:
                    row[col.name] = None  # filled below with distinct values
                else:
                    row[col.name] = rng.choice(col.values)
            if table.parent:
                fk, parent = table.parent
                row[fk] = rng.randint(1, len(rows[parent]))
            out.append(row)
        first = table.columns[0]
        if first.type == "text" and len(first.values) >= table.rows:  # the name column is unique
            for row, value in zip(out, rng.sample(first.values, table.rows)):
                row[first.name] = value
        rows[table.name] = out
    return rows


def _write_db(path: Path, tables: tuple[Table, ...], rows: dict[str, list[dict]]) -> None:
    conn = sqlite3.connect(path)
    try:
        for table in tables:
            cols = [f"{table.key} INTEGER PRIMARY KEY"]
            cols += [f"{c.name} {'INTEGER' if c.type == 'number' else 'TEXT'}" for c in table.columns]
            if table.parent:
                fk, parent = table.parent
                parent_key = next(t.key for t in tables if t.name == parent)
                cols.append(f"{fk} INTEGER")
                cols.append(f"FOREIGN KEY ({fk}) REFERENCES {parent}({parent_key})")
            conn.execute(f"CREATE TABLE {table.name} ({', '.join(cols)})")
            names = list(rows[table.name][0])
            conn.executemany(
                f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [tuple(r[n] for n in names) for r in rows[table.name]],
            )
        conn.commit()
    finally:
        conn.close()


def _table_entry(db_id: str, tables: tuple[Table, ...]) -> dict:
    """The tables.json entry, with Spider's conventions (index 0 is `*`, keys are column indexes)."""
    column_names, column_types, primary_keys, index = [[-1, "*"]], ["text"], [], {}
    for t_idx, table in enumerate(tables):
        cols = [(table.key, "number")] + [(c.name, c.type) for c in table.columns]
        if table.parent:
            cols.append((table.parent[0], "number"))
        for name, ctype in cols:
            index[(table.name, name)] = len(column_names)
            column_names.append([t_idx, name])
            column_types.append(ctype)
        primary_keys.append(index[(table.name, table.key)])
    foreign_keys = []
    for table in tables:
        if table.parent:
            fk, parent = table.parent
            parent_key = next(t.key for t in tables if t.name == parent)
            foreign_keys.append([index[(table.name, fk)], index[(parent, parent_key)]])
    readable = [[t, n.replace("_", " ")] for t, n in column_names]
    return {
        "db_id": db_id,
        "table_names_original": [t.name for t in tables],
        "table_names": [t.name.replace("_", " ") for t in tables],
        "column_names_original": column_names,
        "column_names": readable,
        "column_types": column_types,
        "primary_keys": primary_keys,
        "foreign_keys": foreign_keys,
    }


def level_counts(n: int) -> dict[str, int]:
    """`n` split over the levels in Spider dev's proportions (largest remainder, so they sum to `n`)."""
    exact = {level: n * share for level, share in LEVEL_SHARES.items()}
    counts = {level: int(x) for level, x in exact.items()}
    for level in sorted(exact, key=lambda lv: counts[lv] - exact[lv])[: n - sum(counts.values())]:
        counts[level] += 1
    return counts


def _examples(rng: random.Random, n: int, dbs: dict, conns: dict[str, sqlite3.Connection],
              exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct questions at Spider's level mix, each with a gold query that returns a row, shuffled."""
    out, seen = [], set(exclude)
    db_ids = sorted(dbs)
    for level, count in level_counts(n).items():
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > count * 200 + 1000:
                raise RuntimeError(f"could only generate {made} distinct {level} questions of {count}; "
                                   "lower the count")
            db_id = rng.choice(db_ids)
            tables, rows = dbs[db_id]
            question, query = rng.choice(TEMPLATES[level])(Ctx(rng, tables, rows))
            if question in seen:
                continue
            got = hardness(query)
            if got != level:  # a template filed under the wrong level: a bug here, not a data property
                raise AssertionError(f"sample template gave a {got} query for {level}: {query}")
            first = conns[db_id].execute(query).fetchone()
            if first is None or all(v is None for v in first):  # an empty answer cannot tell queries apart
                continue
            seen.add(question)
            out.append({"db_id": db_id, "question": question, "query": query})
            made += 1
    rng.shuffle(out)
    return out


def generate_sample(out_dir: str | os.PathLike, seed: int = 0, n_train: int = 3000, n_dev: int = 200) -> Path:
    """Write the sample dataset into `out_dir` (created atomically: temp dir, then rename)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        rng = random.Random(seed)
        dbs, conns = {}, {}
        try:
            for db_id, tables in DOMAINS.items():
                rows = _make_rows(rng, tables)
                path = tmp / "database" / db_id / f"{db_id}.sqlite"
                path.parent.mkdir(parents=True)
                _write_db(path, tables, rows)
                dbs[db_id] = (tables, rows)
                conns[db_id] = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            # dev first, then train questions never equal to a dev one: dev keeps every template's natural
            # share, and measures whether the model carries a template over to a table, column or value
            dev = _examples(rng, n_dev, dbs, conns)
            train = _examples(rng, n_train, dbs, conns, exclude={e["question"] for e in dev})
        finally:
            for conn in conns.values():
                conn.close()
        tables_json = [_table_entry(db_id, tables) for db_id, (tables, _) in dbs.items()]
        _dump(tmp / "tables.json", tables_json)
        _dump(tmp / "train_spider.json", train)
        _dump(tmp / "dev.json", dev)
        for name, split in (("train_gold.sql", train), ("dev_gold.sql", dev)):
            (tmp / name).write_text("".join(f"{e['query']}\t{e['db_id']}\n" for e in split), encoding="utf-8")
        mix = ", ".join(f"{k} {v}" for k, v in level_counts(n_dev).items())
        (tmp / "README.md").write_text(
            f"Generated text-to-SQL sample v{SAMPLE_VERSION} (seed {seed}, {n_train} train / {n_dev} dev; dev "
            f"hardness: {mix}) in Spider's layout.\n", encoding="utf-8")
    return out_dir


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def ensure_sample(root: str | os.PathLike, seed: int = 0, n_train: int = 3000, n_dev: int = 200) -> Path:
    """Return `root`, generating the sample there first if it is not complete yet (cheap when cached)."""
    root = Path(root)
    if not (root / "dev_gold.sql").is_file():
        generate_sample(root, seed=seed, n_train=n_train, n_dev=n_dev)
    return root
