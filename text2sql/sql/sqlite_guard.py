"""Open an SQLite file so that nothing can write to it: read-only URI, ``PRAGMA query_only``, an authorizer
that allows reads only (the attempted action is recorded for the verdict) and a progress handler that
enforces a deadline. Used by the evaluator (worker processes and in-process), `text2sql ask`, and
`prepare --from-sqlite` to check gold queries (so it sits below data and eval, importing nothing of ours)."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["DEFAULT_HEAP_LIMIT", "open_readonly"]

DEFAULT_HEAP_LIMIT = 1024 * 1024 * 1024  # per worker process (SQLite's own allocations)



# Actions a query may need: reading, functions, recursive CTEs. Everything else is refused.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
# Pragmas that only read (allowed without an argument, or with a table/index name as argument).
_READ_PRAGMAS_WITH_ARG = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                          "foreign_key_list"}
_READ_PRAGMAS_NO_ARG = _READ_PRAGMAS_WITH_ARG | {
    "database_list", "collation_list", "function_list", "module_list", "pragma_list", "table_list",
    "compile_options", "encoding", "user_version", "application_id", "schema_version", "page_size",
    "page_count", "freelist_count", "query_only", "foreign_keys", "case_sensitive_like"}
_WRITE_WORDS = ("drop", "delete", "update", "insert", "replace", "create", "alter", "attach", "detach",
                "pragma", "vacuum", "reindex", "analyze", "begin", "commit", "end", "rollback", "savepoint",
                "release")


class _Guard:
    """Authorizer state of one connection: records whether the current statement tried to write."""

    __slots__ = ("refused", "deadline")

    def __init__(self) -> None:
        self.refused: str | None = None
        self.deadline = math.inf

    def authorize(self, action, arg1, arg2, dbname, source):  # sqlite3 authorizer callback
        if action in _ALLOWED_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if (arg2 is None and name in _READ_PRAGMAS_NO_ARG) or name in _READ_PRAGMAS_WITH_ARG:
                return sqlite3.SQLITE_OK
            self.refused = f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else "")
            return sqlite3.SQLITE_DENY
        if self.refused is None:
            self.refused = f"action {action} ({arg1 or ''}{' ' + arg2 if arg2 else ''})".strip()
        return sqlite3.SQLITE_DENY

    def progress(self) -> int:  # sqlite3 progress handler: non-zero aborts the statement
        return 1 if time.monotonic() > self.deadline else 0


_heap_limit_set = False


def open_readonly(path: str | os.PathLike, heap_limit: int | None = DEFAULT_HEAP_LIMIT
                  ) -> tuple[sqlite3.Connection, _Guard]:
    """Open an existing SQLite file read-only, with the write-refusing authorizer and a progress handler.

    ``heap_limit`` (bytes) caps SQLite's memory *process-wide* and keeps temporary results in memory, so
    that a huge sort fails fast instead of filling the disk: only for worker processes. ``None`` leaves
    the process's SQLite settings alone (in-process evaluation).
    """
    global _heap_limit_set
    uri = Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    if heap_limit:
        conn.execute("PRAGMA temp_store = MEMORY")  # sorts of huge results hit the heap limit, not the disk
    if heap_limit and not _heap_limit_set:
        try:
            conn.execute(f"PRAGMA hard_heap_limit = {int(heap_limit)}")  # process-wide
        except sqlite3.Error:
            pass
        _heap_limit_set = True
    guard = _Guard()
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, 1000)
    return conn, guard
