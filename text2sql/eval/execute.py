"""Safe, parallel execution-accuracy evaluation (Spider / test-suite semantics). Never imports torch.

Every example gets a :class:`Verdict` with one status of :data:`STATUSES`. Only ``correct`` is correct.

Safety and robustness, beyond the official evaluator:

* databases are opened read-only (``file:...?mode=ro`` URI, ``PRAGMA query_only=ON``) and an SQLite
  *authorizer* allows reads only: any attempt to write (DROP/DELETE/UPDATE/INSERT/CREATE/ALTER/ATTACH,
  writable pragmas, transactions, ...) is refused before it runs and reported as ``write_refused``;
* a hard per-query timeout (SQLite progress handler), backed by a watchdog in the parent that kills a
  worker stuck for longer; a cap on rows and bytes fetched and on SQLite's heap (``hard_heap_limit``,
  in-memory temp store), so a huge cross join can neither hang nor exhaust memory;
* queries run in worker *processes* started fresh (``python -m text2sql.eval.execute --worker``, i.e. a spawn,
  which never inherits the caller's torch threads or imports its ``__main__``); a crashing worker costs one
  example (``exec_error``) and is replaced;
* text that is not valid UTF-8 is decoded with replacement characters instead of failing;
* gold results are computed once per (database file, gold query) and cached for the evaluator's life.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from text2sql.eval.compare import (
    MAX_PLUG_VARIANTS,
    ComparisonTimeout,
    first_statement,
    order_matters,
    plug_value_variants,
    postprocess,
    remove_distinct,
    replace_cur_year,
    result_eq,
)

__all__ = [
    "STATUSES",
    "Verdict",
    "ExecutionEvaluator",
    "QueryResult",
    "execute_query",
    "open_readonly",
    "db_files",
]

STATUSES = ("correct", "wrong_result", "syntax_error", "exec_error", "timeout", "write_refused", "db_missing",
            "empty_prediction")

DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_HEAP_LIMIT = 1024 * 1024 * 1024  # per worker process (SQLite's own allocations)
_WATCHDOG_SLACK_S = 5.0


@dataclass
class Verdict:
    correct: bool
    status: str
    hardness: str  # easy/medium/hard/extra (from the gold query)
    db_id: str
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ============================================================================================ execution
# (runs inside the worker processes, or in-process when workers=0)

import sqlite3  # noqa: E402

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


@dataclass
class QueryResult:
    status: str  # "ok" | "too_many_rows" | a failure status of STATUSES
    rows: list | None = None
    error: str | None = None


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
            return QueryResult("ok", rows)
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
    """Evaluate one example. item: {paths, gold, candidates, ordered, gold_rows: {path: QueryResult}}.

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
                same = result_eq(g.rows, p.rows, item["ordered"], deadline=time.monotonic() + qt)
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


# ============================================================================================ worker process


_FLUSH_S = 0.02


def _worker_main(rfd: int, wfd: int) -> None:
    """Worker loop: receive [(index, item), ...] chunks, answer lists of (index, result) in item order.

    Answers are buffered and flushed at the end of a chunk and, by a helper thread, every ``_FLUSH_S``:
    few messages, yet a finished item is never held back behind a slow one (the parent's watchdog relies
    on it to know which item hangs).
    """
    rconn = Connection(rfd, writable=False)
    wconn = Connection(wfd, readable=False)
    opts = rconn.recv()
    conns = _ConnCache(heap_limit=opts.get("heap_limit"))
    gold_cache: dict = {}
    buf: list = []
    lock = threading.Lock()
    stop = threading.Event()

    def flush() -> None:
        with lock:
            if buf:
                wconn.send(list(buf))
                buf.clear()

    def flusher() -> None:
        while not stop.wait(_FLUSH_S):
            try:
                flush()
            except OSError:
                return

    threading.Thread(target=flusher, daemon=True).start()
    while True:
        try:
            msg = rconn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        for index, item in msg:
            try:
                res = _evaluate_item(item, conns, gold_cache, opts)
            except Exception as err:  # noqa: BLE001 - keep the worker alive
                res = {"status": "exec_error", "error": f"evaluator error: {type(err).__name__}: {err}",
                       "new_gold": {}}
            with lock:
                buf.append((index, res))
        flush()
    stop.set()
    conns.close()


class _Worker:
    def __init__(self, opts: dict) -> None:
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # keep workers lean: no thread pools from numeric libraries
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = "1"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "text2sql.eval.execute", "--worker", str(p2c_r), str(c2p_w)],
                pass_fds=(p2c_r, c2p_w), stdin=subprocess.DEVNULL, env=env, close_fds=True)
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
        self.send_conn = Connection(p2c_w, readable=False)
        self.recv_conn = Connection(c2p_r, writable=False)
        self.known_gold: set = set()
        self.send_conn.send(opts)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.send_conn.close()
        self.recv_conn.close()

    def stop(self) -> None:
        try:
            self.send_conn.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.send_conn.close()
        self.recv_conn.close()


def _shutdown(workers: list) -> None:
    for w in workers:
        if w is not None:
            try:
                w.kill()
            except Exception:  # noqa: BLE001
                pass


# ============================================================================================ evaluator


def db_files(db_dir: str | os.PathLike, db_id: str, test_suite: bool = False) -> list[str]:
    """Database files of ``db_id``: ``<db_dir>/<db_id>/<db_id>.sqlite``, or in test-suite mode every
    ``*.sqlite`` file of the folder (the main one first). Empty when missing."""
    folder = Path(db_dir) / db_id
    main = folder / f"{db_id}.sqlite"
    if not test_suite:
        return [str(main)] if main.is_file() else []
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sqlite") and p.is_file())
    files.sort(key=lambda p: (p != main, p.name))
    return [str(p) for p in files]


class ExecutionEvaluator:
    """Execution accuracy with official Spider semantics; safe, bounded and parallel.

    ``workers``: number of worker processes (``None``: one per CPU core, at most 8; ``0``: run in this process,
    without crash isolation or the watchdog).
    """

    def __init__(self, db_dir, *, timeout: float = 30.0, workers: int | None = None,
                 plug_value: bool = False, keep_distinct: bool = False, test_suite: bool = False,
                 max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES,
                 heap_limit: int | None = DEFAULT_HEAP_LIMIT, max_plug_variants: int = MAX_PLUG_VARIANTS) -> None:
        self.db_dir = Path(db_dir)
        if not self.db_dir.is_dir():
            raise FileNotFoundError(f"database directory not found: {self.db_dir}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.workers = min(os.cpu_count() or 1, 8) if workers is None else max(int(workers), 0)
        self.plug_value = plug_value
        self.keep_distinct = keep_distinct
        self.test_suite = test_suite
        self.max_plug_variants = max_plug_variants
        self._opts = {"timeout": self.timeout, "max_rows": max_rows, "max_bytes": max_bytes,
                      "heap_limit": heap_limit}
        self._gold_cache: dict[tuple[str, str], QueryResult] = {}
        self._gold_text: dict[str, tuple[str, bool]] = {}
        self._db_files: dict[str, list[str]] = {}
        self._pool: list[_Worker | None] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)
        self._local_conns: _ConnCache | None = None
        self._closed = False
        self.chunk_size = 64  # examples per message to a worker
        for _ in range(self.workers):  # start now: the interpreters boot while the caller does other work
            self._pool.append(_Worker(self._opts))

    # -- lifecycle
    def __getstate__(self) -> dict:
        """Picklable (e.g. a callback sent to another process): workers and connections are not carried."""
        state = self.__dict__.copy()
        state["_pool"] = []
        state["_local_conns"] = None
        state.pop("_finalizer", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._finalizer = weakref.finalize(self, _shutdown, self._pool)

    def close(self) -> None:
        for w in self._pool:
            if w is not None:
                w.stop()
        self._pool.clear()
        if self._local_conns is not None:
            self._local_conns.close()
            self._local_conns = None
        self._closed = True

    def __enter__(self) -> "ExecutionEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- preparation
    def _files(self, db_id: str) -> list[str]:
        files = self._db_files.get(db_id)
        if files is None:
            files = self._db_files[db_id] = db_files(self.db_dir, db_id, self.test_suite)
        return files

    def _prepare_gold(self, gold: str) -> tuple[str, bool]:
        hit = self._gold_text.get(gold)
        if hit is None:
            g = postprocess(gold.strip())
            if not self.keep_distinct:  # official: sqlparse keeps the first statement only
                g = remove_distinct(first_statement(g))
            hit = self._gold_text[gold] = (replace_cur_year(g), order_matters(g))
        return hit

    def _prepare(self, gold: str, pred: str) -> tuple[str, list[str], bool]:
        g, ordered = self._prepare_gold(gold)
        p = postprocess(pred.strip().replace(" value ", " 1 "))
        if not self.keep_distinct:  # official: the first statement only; --keep-distinct runs the whole string
            p = remove_distinct(first_statement(p))
        p = replace_cur_year(p)
        candidates = [p]
        if self.plug_value:
            candidates += plug_value_variants(g, p, self.max_plug_variants)
        return g, candidates, ordered

    # -- evaluation
    def evaluate(self, items: Sequence[tuple[str, str, str]], progress: bool = False) -> list[Verdict]:
        """Verdicts for ``items`` = (db_id, gold_sql, pred_sql), in order."""
        if self._closed:
            raise RuntimeError("ExecutionEvaluator is closed")
        from text2sql.eval.hardness import hardness

        items = list(items)
        results: list[tuple[str, str | None] | None] = [None] * len(items)
        todo: list[tuple[int, dict]] = []
        for i, (db_id, gold, pred) in enumerate(items):
            pred = pred or ""
            files = self._files(db_id)
            if not files:
                results[i] = ("db_missing", f"database not found: {self.db_dir / db_id / (db_id + '.sqlite')}")
            elif not pred.strip().strip(";").strip():
                results[i] = ("empty_prediction", None)
            else:
                g, candidates, ordered = self._prepare(gold, pred)
                todo.append((i, {"paths": files, "gold": g, "candidates": candidates, "ordered": ordered}))

        bar = _Progress(len(items), enabled=progress)
        bar.advance(len(items) - len(todo))

        def finish(i: int, res: dict) -> None:
            results[i] = (res["status"], res.get("error"))
            bar.advance(1)

        try:
            if self.workers == 0:
                self._run_local(todo, finish)
                levels = [hardness(gold) for _, gold, _ in items]
            else:
                # hardness (sqlglot parsing) runs here while the workers execute
                levels = self._run_pool(todo, finish, lambda: [hardness(gold) for _, gold, _ in items])
        finally:
            bar.close()
        out = []
        for (db_id, _, _), level, res in zip(items, levels, results):
            status, error = res if res is not None else ("exec_error", "not evaluated")
            out.append(Verdict(status == "correct", status, level, db_id, error))
        return out

    def _run_local(self, todo, finish) -> None:
        if self._local_conns is None:
            self._local_conns = _ConnCache(heap_limit=None)  # never cap the caller's own process
        for i, item in todo:
            res = _evaluate_item(item, self._local_conns, self._gold_cache, self._opts)
            finish(i, res)

    def _item_budget(self, item: dict) -> float:
        n_paths = len(item["paths"])
        n = n_paths + sum(1 for p in item["paths"] if (p, item["gold"]) not in self._gold_cache)
        n += 1 if len(item["candidates"]) > 1 else 0  # all plug-value variants share one timeout
        return n * (2 * self.timeout + 0.5) + _WATCHDOG_SLACK_S  # queries + comparisons + slack

    def _run_pool(self, todo, finish, meanwhile: Callable[[], Any]) -> Any:
        n_workers = max(1, min(self.workers, len(todo)))
        while len(self._pool) < n_workers:
            self._pool.append(None)
        queue = deque(todo)
        lock = threading.Lock()
        chunk = max(1, min(self.chunk_size, math.ceil(len(todo) / (n_workers * 4)) if todo else 1))
        errors: list[BaseException] = []

        def take() -> list[tuple[int, dict]]:
            with lock:
                out = []
                while queue and len(out) < chunk:
                    out.append(queue.popleft())
                return out

        def attach_gold(worker: _Worker, item: dict) -> dict:
            rows = {}
            for p in item["paths"]:
                key = (p, item["gold"])
                if key in worker.known_gold:
                    continue
                g = self._gold_cache.get(key)
                if g is not None:
                    rows[p] = g
                    worker.known_gold.add(key)
            return dict(item, gold_rows=rows) if rows else item

        def loop(slot: int) -> None:
            try:
                while True:
                    batch = take()
                    if not batch:
                        return
                    worker = self._pool[slot]
                    if worker is None or worker.proc.poll() is not None:
                        if worker is not None:
                            worker.kill()
                        worker = self._pool[slot] = _Worker(self._opts)
                    with lock:
                        payload = [(i, attach_gold(worker, item)) for i, item in batch]
                    worker.send_conn.send(payload)
                    pending = deque(batch)
                    while pending:
                        i, item = pending[0]
                        budget = self._item_budget(item) + 1.0
                        answers = None
                        if worker.recv_conn.poll(budget):
                            try:
                                answers = worker.recv_conn.recv()
                            except (EOFError, OSError):
                                answers = None
                            failure = "crash"
                        else:
                            failure = "timeout"
                        if answers is None:  # crashed or stuck on pending[0]: it is lost, the rest goes back
                            code = worker.proc.poll()
                            worker.kill()
                            worker = self._pool[slot] = None
                            if failure == "timeout":
                                res = {"status": "timeout",
                                       "error": f"no answer within {budget:.0f} s: worker killed"}
                            else:
                                res = {"status": "exec_error", "error": f"worker crashed (exit code {code})"}
                            pending.popleft()
                            finish(i, res)
                            with lock:
                                queue.extendleft(reversed(list(pending)))
                            break
                        for j, res in answers:
                            i, item = pending.popleft()
                            assert j == i, (j, i)
                            new_gold = res.pop("new_gold", None)
                            if new_gold:
                                with lock:
                                    for p, g in new_gold.items():
                                        self._gold_cache[(p, item["gold"])] = g
                                        worker.known_gold.add((p, item["gold"]))
                            finish(i, res)
            except BaseException as err:  # noqa: BLE001 - reported in the caller's thread
                errors.append(err)

        threads = [threading.Thread(target=loop, args=(s,), daemon=True) for s in range(n_workers)]
        for t in threads:
            t.start()
        try:
            value = meanwhile()
        finally:
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return value

    # -- convenience
    def gold_cache_size(self) -> int:
        return len(self._gold_cache)


class _Progress:
    """A rich progress bar on stderr (silent when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        self._lock = threading.Lock()
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("eval", total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--worker":
        # run the loop from the importable module so that pickled classes resolve in the parent
        from text2sql.eval import execute as module

        module._worker_main(int(argv[1]), int(argv[2]))
        return 0
    print("usage: python -m text2sql.eval.execute --worker RFD WFD (internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
