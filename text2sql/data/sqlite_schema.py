"""A database's schema read from its SQLite file: one implementation for `prepare --from-sqlite` and `ask`.

It builds the Spider `tables.json` entry (and so the project's `SpiderSchema` and DB-GPT-Hub's schema text)
the way Spider's own `preprocess/get_tables.py` does: tables in `sqlite_master` order, columns from
`PRAGMA table_info`, Spider's coarse column types, foreign keys from `PRAGMA foreign_key_list`. Two choices
differ from that script, on purpose: a composite primary key is one entry (a list of column indexes, which the
schema text renders as ``The combination of (a, b) are the primary key.``) rather than one entry per column,
and SQLite's internal tables (`sqlite_sequence`, `sqlite_stat1`) are left out. The file is opened read-only.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from text2sql.data.spider import SpiderSchema
from text2sql.errors import UserError

SQLITE_HEADER = b"SQLite format 3\x00"


class SQLiteSchemaError(UserError, ValueError):
    """A file that is not an SQLite database, or one with nothing to describe; one line naming the file."""


def is_sqlite_file(path: str | Path) -> bool:
    """True for a file that starts with SQLite's magic header (an empty file is not a database here)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def column_type(declared: str) -> str:
    """Spider's coarse type of a declared SQLite column type (get_tables.py's rules, in its order)."""
    t = declared.lower()
    if "char" in t or t == "" or "text" in t or "var" in t:
        return "text"
    if any(k in t for k in ("int", "numeric", "decimal", "number", "id", "real", "double", "float")):
        return "number"
    if any(k in t for k in ("date", "time", "year")):
        return "time"
    if "boolean" in t:
        return "boolean"
    return "others"


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise SQLiteSchemaError(f"database file not found: {path}")
    if not is_sqlite_file(path):
        raise SQLiteSchemaError(f"{path} is not an SQLite database (no 'SQLite format 3' header)")
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    return conn


def _find(names: list[str], name: str) -> int | None:
    """Index of `name` in `names`: exact first, then ignoring case (SQLite resolves names without case)."""
    if name in names:
        return names.index(name)
    low = [n.lower() for n in names]
    return low.index(name.lower()) if name.lower() in low else None


def read_schema(path: str | Path, db_id: str | None = None) -> SpiderSchema:
    """The SpiderSchema of one SQLite file (db_id: the file's stem unless given)."""
    path = Path(path)
    conn = _connect(path)
    try:
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "ORDER BY rowid")]
        except sqlite3.DatabaseError as err:
            raise SQLiteSchemaError(f"{path} cannot be read as an SQLite database: {err}") from None
        if not tables:
            raise SQLiteSchemaError(f"{path} has no tables: there is no schema to describe")
        columns: list[tuple[int, str]] = [(-1, "*")]
        types, primary_keys, by_table = ["text"], [], []
        for t, table in enumerate(tables):
            info = conn.execute("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", (table,)).fetchall()
            first = len(columns)
            columns += [(t, name) for name, _, _ in info]
            types += [column_type(declared or "") for _, declared, _ in info]
            keys = [first + i for i, _ in sorted(enumerate(info), key=lambda p: p[1][2]) if info[i][2] > 0]
            if keys:
                primary_keys.append(keys[0] if len(keys) == 1 else keys)
            by_table.append(keys)
        foreign_keys = _foreign_keys(conn, tables, columns, by_table)
    finally:
        conn.close()
    return SpiderSchema(db_id=db_id or path.stem, table_names=tables, column_names=columns, column_types=types,
                        primary_keys=primary_keys, foreign_keys=foreign_keys)


def _foreign_keys(conn: sqlite3.Connection, tables: list[str], columns: list[tuple[int, str]],
                  keys_by_table: list[list[int]]) -> list[list[int]]:
    """[child column, parent column] index pairs; a key naming a missing table or column is left out, as
    Spider's script leaves it out (SQLite does not check them unless foreign keys are enforced)."""
    out: list[list[int]] = []
    for t, table in enumerate(tables):
        for _, seq, parent, child_col, parent_col in conn.execute(
                'SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(?)', (table,)):
            p = _find(tables, parent)
            if p is None:
                continue
            if parent_col is None:  # REFERENCES parent without a column: the parent's primary key
                parent_keys = keys_by_table[p]
                if seq >= len(parent_keys):
                    continue
                b = parent_keys[seq]
            else:
                b = _column_index(columns, p, parent_col)
            a = _column_index(columns, t, child_col)
            if a is not None and b is not None and [a, b] not in out:
                out.append([a, b])
    return out


def _column_index(columns: list[tuple[int, str]], table: int, name: str) -> int | None:
    idx = [i for i, (t, _) in enumerate(columns) if t == table]
    found = _find([columns[i][1] for i in idx], name)
    return None if found is None else idx[found]


def _normalized(name: str) -> str:
    return name.lower().replace("_", " ")


def tables_json_entry(schema: SpiderSchema) -> dict:
    """The schema as one entry of Spider's tables.json (with Spider's normalised names beside the originals)."""
    return {
        "db_id": schema.db_id,
        "table_names_original": list(schema.table_names),
        "table_names": [_normalized(n) for n in schema.table_names],
        "column_names_original": [[t, n] for t, n in schema.column_names],
        "column_names": [[t, n if t < 0 else _normalized(n)] for t, n in schema.column_names],
        "column_types": list(schema.column_types),
        "primary_keys": list(schema.primary_keys),
        "foreign_keys": [list(fk) for fk in schema.foreign_keys],
    }
