"""The databases a server answers on (`--db-dir`), their schemas, and SQL run read-only through the evaluator's guard.

A database is named by its `db_id`, as Spider names them: `DIR/<db_id>/<db_id>.sqlite` (Spider's and BIRD's
layout, the evaluator's `db_files`) or `DIR/<db_id>.sqlite`. Only the ids found at start are served, so a
request can never name a path. SQL runs as `ask` runs it: `open_readonly` (read-only URI, `query_only`, the
write-refusing authorizer, a deadline) and `execute_query` (statuses, not exceptions; a row cap), one
connection per database per worker thread.
"""

from __future__ import annotations

import math
import re
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from text2sql.errors import UserError
from text2sql.serve.engine import Schema

ROW_CAP = 100_000  # rows fetched at most (as `ask`); a response shows `max_rows` of them
_DDL = re.compile(r"^\s*create\s+(?:temp\w*\s+)?(?:table|(?:unique\s+)?index|view)\b", re.I)


class UnknownDatabase(LookupError):
    """A db_id the server does not have: a 404 with the ids it does have."""


def discover(db_dir: Path | None) -> dict[str, Path]:
    """db_id -> SQLite file under `db_dir` (empty without one); a dir holding none is a one-line error."""
    if db_dir is None:
        return {}
    from text2sql.eval.execute import db_files

    db_dir = Path(db_dir).expanduser()
    if not db_dir.is_dir():
        raise UserError(f"--db-dir {db_dir}: not a directory (give the folder holding <db_id>/<db_id>.sqlite, "
                        "e.g. ../shared/spider/database)")
    found: dict[str, Path] = {}
    for entry in sorted(db_dir.iterdir()):
        nested = db_files(db_dir, entry.name) if entry.is_dir() else []
        if nested:
            found[entry.name] = Path(nested[0]).resolve()
        elif entry.is_file() and entry.suffix in (".sqlite", ".db"):
            found.setdefault(entry.stem, entry.resolve())
    if not found:
        raise UserError(f"--db-dir {db_dir} holds no <db_id>/<db_id>.sqlite and no *.sqlite file")
    return found


def cell(value):
    """A result value as JSON can carry it (blobs as their size, as `ask` shows them; inf as text)."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Databases:
    def __init__(self, db_dir: Path | None, timeout: float) -> None:
        self.db_dir = Path(db_dir).resolve() if db_dir is not None else None
        self.files = discover(db_dir)
        self.timeout = float(timeout)
        self._schemas: dict[str, Schema] = {}
        self._texts: OrderedDict[str, Schema] = OrderedDict()  # schemas given as text, last 64
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return list(self.files)

    def schema(self, db_id: str) -> Schema:
        if db_id not in self.files:
            known = ", ".join(list(self.files)[:8]) + (" ..." if len(self.files) > 8 else "")
            where = f"under --db-dir {self.db_dir} ({known})" if self.files else "(the server has no --db-dir)"
            raise UnknownDatabase(f"unknown db_id {db_id!r}: not one of the databases {where}")
        if db_id not in self._schemas:
            from text2sql.data.sqlite_schema import read_schema

            self._schemas[db_id] = Schema(db_id, read_schema(self.files[db_id], db_id), None, str(self.files[db_id]))
        return self._schemas[db_id]

    def schema_from_text(self, text: str, verbatim: bool = False) -> Schema:
        """A schema given in a request: CREATE statements become the run's schema sentences (read back from a
        scratch database, as `prepare --from-sqlite` reads one); other text, or `verbatim`, goes in as written."""
        key = f"{verbatim}:{text}"
        with self._lock:
            if key in self._texts:
                self._texts.move_to_end(key)
                return self._texts[key]
        parsed = None if verbatim else _parse_ddl(text)
        schema = Schema("schema", parsed, None if parsed is not None else text.strip(), None)
        with self._lock:
            self._texts[key] = schema
            while len(self._texts) > 64:
                self._texts.popitem(last=False)
        return schema

    def _connection(self, path: str):
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        if path not in conns:
            from text2sql.sql.sqlite_guard import open_readonly

            conns[path] = open_readonly(path, heap_limit=None)  # the server's own process: no process-wide cap
            with self._lock:
                self._opened.append(conns[path][0])
        return conns[path]

    def execute(self, db_file: str, sql: str, max_rows: int) -> dict:
        """Run `sql` on `db_file` read-only with the eval timeout: status, error, columns, first rows, row count."""
        from text2sql.eval.query import execute_query

        start = time.perf_counter()
        if not sql.strip():
            return {"status": "empty_prediction", "error": "the model wrote no SQL", "columns": [], "rows": [],
                    "row_count": 0, "execution_s": 0.0}
        conn, guard = self._connection(db_file)
        result = execute_query(conn, guard, sql, self.timeout, max_rows=ROW_CAP)
        rows = result.rows or []
        return {"status": result.status, "error": result.error, "columns": list(result.columns or []),
                "rows": [[cell(v) for v in row] for row in rows[:max_rows]], "row_count": len(rows),
                "execution_s": round(time.perf_counter() - start, 6)}

    def close(self) -> None:
        with self._lock:
            for conn in self._opened:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._opened.clear()


def _parse_ddl(text: str):
    """The SpiderSchema of CREATE statements, or None when the text is not (only) SQLite DDL."""
    from text2sql.data.sqlite_schema import read_schema

    statements = [s for s in text.split(";") if s.strip()]
    if not statements or not all(_DDL.match(s) for s in statements):
        return None
    deadline = time.monotonic() + 1.0
    with tempfile.TemporaryDirectory(prefix="text2sql-serve-") as tmp:
        path = Path(tmp) / "schema.sqlite"
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA max_page_count = 2048")  # a scratch file of at most a few MB
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            conn.executescript(text)
        except sqlite3.Error:
            return None
        finally:
            conn.close()
        try:
            return read_schema(path, "schema")
        except UserError:
            return None
