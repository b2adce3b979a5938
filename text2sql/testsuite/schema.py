"""A database's schema and value pools, read from its SQLite file through the evaluator's read-only guard, and the
same schema recreated in a new file (the original CREATE statements, in `sqlite_master` order).

What a neighbour must honour is read from SQLite itself: columns and declared types (`PRAGMA table_info`), NOT
NULL, the primary key, UNIQUE constraints and unique indexes (`PRAGMA index_list` / `index_info`) and foreign keys
(`PRAGMA foreign_key_list`). The original file is only ever opened read-only (`sql.sqlite_guard.open_readonly`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from text2sql.eval.query import execute_query
from text2sql.errors import UserError
from text2sql.sql.sqlite_guard import open_readonly

__all__ = ["Column", "Table", "DbSchema", "SchemaError", "read_db", "write_db", "quote"]

POOL_ROWS = 2000  # rows read per table for the value pools (the first ones: bounded on huge tables)
POOL_SIZE = 200  # distinct values kept per column


class SchemaError(UserError, ValueError):
    """A database whose schema cannot be read or recreated; one line naming the database and the statement."""


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Column:
    name: str
    declared: str  # the declared type, as written
    notnull: bool
    pk: int  # position in the primary key (0: not part of it)
    pool: list = field(default_factory=list)  # distinct original values (first POOL_SIZE, file order)

    @property
    def affinity(self) -> str:
        """SQLite's type affinity of the declared type (the rules of section 3.1 of SQLite's datatype page)."""
        t = self.declared.upper()
        if "INT" in t:
            return "integer"
        if any(k in t for k in ("CHAR", "CLOB", "TEXT")):
            return "text"
        if t == "" or "BLOB" in t:
            return "blob"
        if any(k in t for k in ("REAL", "FLOA", "DOUB")):
            return "real"
        return "numeric"


@dataclass
class Table:
    name: str
    columns: list[Column]
    uniques: list[tuple[str, ...]]  # primary key and UNIQUE column sets (each must stay unique)
    fks: list[tuple[tuple[str, ...], str, tuple[str, ...]]]  # (columns, parent table, parent columns)
    rows: int  # original row count (capped at POOL_ROWS)

    def column(self, name: str) -> Column | None:
        low = name.lower()
        return next((c for c in self.columns if c.name.lower() == low), None)


@dataclass
class DbSchema:
    db_id: str
    path: Path
    tables: list[Table]
    creates: list[str]  # CREATE TABLE then CREATE INDEX statements, sqlite_master order
    later: list[str]  # views and triggers: created after the rows are in

    def table(self, name: str) -> Table | None:
        low = name.lower()
        return next((t for t in self.tables if t.name.lower() == low), None)


def _rows(conn, guard, sql: str, where: str, timeout: float) -> list:
    res = execute_query(conn, guard, sql, timeout)
    if res.status != "ok":
        raise SchemaError(f"{where}: cannot read the schema ({res.status}: {res.error})")
    return res.rows


def read_db(path: str | Path, db_id: str, timeout: float = 30.0) -> DbSchema:
    """The schema of `path` with each column's value pool; the file is opened read-only through the guard."""
    path = Path(path)
    try:
        conn, guard = open_readonly(path, heap_limit=None)
    except sqlite3.Error as err:
        raise SchemaError(f"{path}: cannot open the database ({err})") from None
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    where = f"{db_id} ({path})"
    try:
        master = _rows(conn, guard, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid", where,
                       timeout)
        tables = [_read_table(conn, guard, name, where, timeout) for kind, name, _, sql in master
                  if kind == "table" and not name.lower().startswith("sqlite_") and sql]
    finally:
        conn.close()
    creates = [sql for kind, name, _, sql in master if kind == "table" and sql and not name.lower().startswith("sqlite_")]
    creates += [sql for kind, name, _, sql in master if kind == "index" and sql]
    later = [sql for kind, _, _, sql in master if kind in ("view", "trigger") and sql]
    if not tables:
        raise SchemaError(f"{where}: the database has no tables; there is nothing to build neighbours of")
    return DbSchema(db_id, path, tables, creates, later)


def _read_table(conn, guard, name: str, where: str, timeout: float) -> Table:
    q = quote(name)
    info = _rows(conn, guard, f"PRAGMA table_info({q})", where, timeout)
    columns = [Column(cname, decl or "", bool(notnull), int(pk)) for _, cname, decl, notnull, _, pk in info]
    uniques: list[tuple[str, ...]] = []
    pk = tuple(c.name for c in sorted((c for c in columns if c.pk), key=lambda c: c.pk))
    if pk:
        uniques.append(pk)
    for _, iname, unique, *rest in _rows(conn, guard, f"PRAGMA index_list({q})", where, timeout):
        partial = rest[1] if len(rest) > 1 else 0
        if not unique or partial:
            continue
        cols = tuple(r[2] for r in _rows(conn, guard, f"PRAGMA index_info({quote(iname)})", where, timeout))
        if cols and all(cols) and cols not in uniques:
            uniques.append(cols)
    fks: dict[int, tuple[list[str], str, list[str | None]]] = {}
    for fk_id, _, parent, src, dst, *_ in _rows(conn, guard, f"PRAGMA foreign_key_list({q})", where, timeout):
        entry = fks.setdefault(fk_id, ([], parent, []))
        entry[0].append(src)
        entry[2].append(dst)
    sample = _rows(conn, guard, f"SELECT * FROM {q} LIMIT {POOL_ROWS}", where, timeout)
    for i, col in enumerate(columns):
        seen: dict = {}
        for row in sample:
            v = row[i]
            if v is not None and (v, type(v)) not in seen:
                seen[(v, type(v))] = v
                if len(seen) >= POOL_SIZE:
                    break
        col.pool = list(seen.values())
    return Table(name, columns, uniques, [(tuple(s), p, tuple(d)) for s, p, d in fks.values()], len(sample))


def write_db(schema: DbSchema, rows: dict[str, list[tuple]], path: str | Path) -> None:
    """A new SQLite file at `path` with the original schema and `rows` (table -> rows in column order). Rows a
    constraint refuses (a duplicate key, a CHECK) are left out (INSERT OR IGNORE); a statement SQLite cannot run
    here (e.g. a virtual table of a missing module) is a SchemaError."""
    path = Path(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for sql in schema.creates:
            _create(conn, sql, schema)
        for table in schema.tables:
            data = rows.get(table.name) or []
            if data:
                cols = ", ".join(quote(c.name) for c in table.columns)
                marks = ", ".join("?" * len(table.columns))
                conn.executemany(f"INSERT OR IGNORE INTO {quote(table.name)} ({cols}) VALUES ({marks})", data)
        for sql in schema.later:
            _create(conn, sql, schema)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _create(conn: sqlite3.Connection, sql: str, schema: DbSchema) -> None:
    try:
        conn.execute(sql)
    except sqlite3.Error as err:
        first = " ".join(sql.split())[:80]
        raise SchemaError(f"{schema.db_id} ({schema.path}): SQLite cannot recreate its schema here: {err} "
                          f"(in `{first}`)") from None
