"""One query against one guarded connection, and one example (gold + prediction candidates on every
database file), with statuses instead of exceptions. Runs in the worker processes or in-process."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import time
from dataclasses import dataclass

from text2sql.eval.compare import ComparisonTimeout, result_eq, row_sets_equal
from text2sql.sql.sqlite_guard import _WRITE_WORDS, DEFAULT_HEAP_LIMIT, _Guard, open_readonly

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ROWS", "QueryResult", "execute_query"]

DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class QueryResult:
    status: str  # "ok" | "too_many_rows" | a failure status of STATUSES
    rows: list | None = None
    error: str | None = None
    columns: list[str] | None = None  # result column names (what `ask` shows as the table header)


def _classify(err: BaseException, guard: _Guard, timed_out: bool) -> tuple[str, str]:
    msg = str(err) or type(err).__name__
    low = msg.lower()
    if guard.refused is not None:
        return "write_refused", f"write refused: {guard.refused}"
    if timed_out or low == "interrupted":
        return "timeout", "query exceeded the time limit"
    if any(k in low for k in ("readonly", "read-only", "not authorized", "query_only", "may not be modified",
                              "attempt to write", "cannot modify", "cannot commit", "cannot start a transaction")):
        return "write_refused", msg
    if "one statement at a time" in low:
        return "syntax_error", msg
    if "syntax error" in low or "incomplete input" in low or "unrecognized token" in low:
        return "syntax_error", msg
    return "exec_error", msg


def _tail_writes(sql: str) -> bool:
    """Whether a statement after the first one starts with a writing keyword (``SELECT 1; DROP ...``)."""
    from text2sql.eval.compare import _split_quoted

    statements, current = [], []
    for quoted, text in _split_quoted(sql):
        if quoted:
            current.append(" ")
            continue
        pieces = text.split(";")
        current.append(pieces[0])
        for piece in pieces[1:]:
            statements.append("".join(current))
            current = [piece]
    statements.append("".join(current))
    for stmt in statements[1:]:
        words = stmt.strip().split(None, 1)
        if words and words[0].lower() in _WRITE_WORDS:
            return True
    return False


def execute_query(conn: sqlite3.Connection, guard: _Guard, sql: str, timeout: float,
                  max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES) -> QueryResult:
    """Run one query with the connection's guard armed; never raises for a bad query."""
    for attempt in range(2):
        guard.refused = None
        guard.deadline = time.monotonic() + timeout
        cur = None
        try:
            cur = conn.cursor()
            cur.execute(sql)
            if cur.description is None:  # no result columns: not a query (REINDEX, ANALYZE, BEGIN, ...)
                return QueryResult("write_refused", None, "write refused: not a read-only query")
            rows: list = []
            nbytes = 0
            while True:
                chunk = cur.fetchmany(4096)
                if not chunk:
                    break
                rows.extend(chunk)
                for row in chunk:
                    for v in row:
                        if v.__class__ is str or v.__class__ is bytes:
                            nbytes += len(v)
                nbytes += 64 * len(chunk)
                if len(rows) > max_rows or nbytes > max_bytes:
                    return QueryResult("too_many_rows", None,
                                       f"result exceeds the cap of {max_rows} rows / {max_bytes} bytes")
            if guard.refused is not None:  # denied sub-action that did not abort (defensive)
                return QueryResult("write_refused", None, f"write refused: {guard.refused}")
            return QueryResult("ok", rows, columns=[d[0] for d in cur.description])
        except sqlite3.OperationalError as err:
            if attempt == 0 and "could not decode" in str(err).lower():
                conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
                continue
            timed_out = time.monotonic() > guard.deadline
            status, msg = _classify(err, guard, timed_out)
            return QueryResult(status, None, msg)
        except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as err:
            status, msg = _classify(err, guard, False)
            if status == "syntax_error" and "one statement at a time" in msg.lower() and _tail_writes(sql):
                status, msg = "write_refused", "write refused: a later statement writes"
            return QueryResult(status, None, msg)
        except MemoryError:
            return QueryResult("exec_error", None, "out of memory")
        finally:
            guard.deadline = math.inf
            if cur is not None:
                try:
                    cur.close()
                except sqlite3.Error:
                    pass
            if conn.in_transaction:  # never keep anything open between queries
                try:
                    conn.rollback()
                except sqlite3.Error:
                    pass
    return QueryResult("exec_error", None, "undecodable text")  # pragma: no cover


class _ConnCache:
    """Open read-only connections per database file (LRU)."""

    def __init__(self, size: int = 64, heap_limit: int | None = DEFAULT_HEAP_LIMIT) -> None:
        self.size = size
        self.heap_limit = heap_limit
        self._conns: dict[str, tuple[sqlite3.Connection, _Guard]] = {}

    def get(self, path: str) -> tuple[sqlite3.Connection, _Guard]:
        entry = self._conns.pop(path, None)
        if entry is None:
            entry = open_readonly(path, self.heap_limit)
            while len(self._conns) >= self.size:
                old = next(iter(self._conns))
                self._conns.pop(old)[0].close()
        self._conns[path] = entry
        return entry

    def close(self) -> None:
        for conn, _ in self._conns.values():
            conn.close()
        self._conns.clear()


def _run(conns: _ConnCache, path: str, sql: str, opts: dict, timeout: float | None = None) -> QueryResult:
    try:
        conn, guard = conns.get(path)
    except sqlite3.Error as err:
        return QueryResult("db_missing", None, f"cannot open {path}: {err}")
    return execute_query(conn, guard, sql, opts["timeout"] if timeout is None else timeout, opts["max_rows"],
                         opts["max_bytes"])


def _evaluate_item(item: dict, conns: _ConnCache, gold_cache: dict, opts: dict) -> dict:
    """Evaluate one example. item: {paths, gold, candidates, ordered, rule, gold_rows: {path: QueryResult}}
    (rule: "set" for BIRD's row-set equality, else Spider's denotation equality).

    Returns {status, error, new_gold: {path: QueryResult}} where new_gold holds gold results computed here.
    """
    new_gold: dict[str, QueryResult] = {}
    golds: list[QueryResult] = []
    for path in item["paths"]:
        key = (path, item["gold"])
        g = item.get("gold_rows", {}).get(path) or gold_cache.get(key)
        if g is None:
            g = _run(conns, path, item["gold"], opts)
            if g.status in ("ok", "too_many_rows", "syntax_error", "exec_error", "write_refused"):
                gold_cache[key] = g
                new_gold[path] = g
        else:
            gold_cache[key] = g
        golds.append(g)
        if g.status != "ok":
            name = os.path.basename(path)
            if g.status == "db_missing":
                return {"status": "db_missing", "error": g.error, "new_gold": new_gold}
            return {"status": "exec_error", "error": f"gold query failed on {name}: {g.status}: {g.error}",
                    "new_gold": new_gold}

    first: tuple[str, str | None] | None = None
    variants_deadline = math.inf
    for ci, cand in enumerate(item["candidates"]):
        status, error = "correct", None
        if ci == 1:  # plug-value variants share one budget of `timeout` seconds in all
            variants_deadline = time.monotonic() + opts["timeout"]
        if ci >= 1 and time.monotonic() >= variants_deadline:
            break
        for path, g in zip(item["paths"], golds):
            qt = opts["timeout"] if ci == 0 else max(0.001, min(opts["timeout"], variants_deadline - time.monotonic()))
            p = _run(conns, path, cand, opts, qt)
            if p.status == "too_many_rows":
                status, error = "wrong_result", p.error
                break
            if p.status != "ok":
                status, error = p.status, p.error
                break
            try:
                same = (row_sets_equal(g.rows, p.rows) if item.get("rule") == "set"
                        else result_eq(g.rows, p.rows, item["ordered"], deadline=time.monotonic() + qt))
            except ComparisonTimeout as err:
                status, error = "timeout", str(err)
                break
            if not same:
                status, error = "wrong_result", None
                if len(item["paths"]) > 1:
                    error = f"differs on {os.path.basename(path)}"
                break
        if status == "correct":
            return {"status": "correct", "error": None if ci == 0 else f"correct with plugged values (variant {ci})",
                    "new_gold": new_gold}
        if first is None:
            first = (status, error)
            if status == "write_refused":  # plugging values into a write is still a write
                break
    assert first is not None
    return {"status": first[0], "error": first[1], "new_gold": new_gold}


def result_key(rows: list) -> str:
    """A digest equal for results that are the same bag of rows up to column order (how Spider compares results;
    coarser only in that each row's values are compared as a bag)."""
    def norm(v):
        return int(v) if isinstance(v, float) and v.is_integer() else v

    canon = sorted(repr(sorted(repr(norm(v)) for v in row)) for row in rows)
    return hashlib.sha1("\n".join(canon).encode("utf-8", "replace")).hexdigest()


def _execute_item(item: dict, conns: _ConnCache, opts: dict) -> dict:
    """Run one candidate, no gold. item: {paths: [file], sql}. Returns {status, error, rows, key}: the row count and
    a result digest (not the rows: decoding only counts and compares them)."""
    res = _run(conns, item["paths"][0], item["sql"], opts)
    if res.status != "ok":
        return {"status": res.status, "error": res.error, "rows": 0, "key": None}
    return {"status": "ok", "error": None, "rows": len(res.rows), "key": result_key(res.rows)}


def _answer_item(item: dict, conns: _ConnCache, gold_cache: dict, opts: dict) -> dict:
    """A worker's answer: one candidate run (`sql` items, decoding) or one example scored against its gold."""
    return _execute_item(item, conns, opts) if "sql" in item else _evaluate_item(item, conns, gold_cache, opts)
