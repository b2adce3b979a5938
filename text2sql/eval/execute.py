"""Safe, parallel execution-accuracy evaluation (Spider / test-suite semantics). Never imports torch.

Every example gets a :class:`Verdict` with one status of :data:`STATUSES`. Only ``correct`` is correct.

Safety and robustness, beyond the official evaluator:

* databases are opened read-only (``file:...?mode=ro`` URI, ``PRAGMA query_only=ON``) and an SQLite
  *authorizer* allows reads only: any attempt to write (DROP/DELETE/UPDATE/INSERT/CREATE/ALTER/ATTACH,
  writable pragmas, transactions, ...) is refused before it runs and reported as ``write_refused``;
* a hard per-query timeout (SQLite progress handler), backed by a watchdog in the parent that kills a
  worker stuck for longer; a cap on rows and bytes fetched and on SQLite's heap (``hard_heap_limit``,
  in-memory temp store), so a huge cross join can neither hang nor exhaust memory;
* queries run in worker *processes* started fresh (``python -m text2sql.eval.pool --worker``, i.e. a spawn,
  which never inherits the caller's torch threads or imports its ``__main__``); a crashing worker costs one
  example (``exec_error``) and is replaced;
* text that is not valid UTF-8 is decoded with replacement characters instead of failing;
* gold results are computed once per (database file, gold query) and cached for the evaluator's life.

The parts live in their own modules (:mod:`~text2sql.sql.sqlite_guard`: the read-only guard;
:mod:`~text2sql.eval.query`: one query and one example; :mod:`~text2sql.eval.pool`: the worker processes);
this module schedules examples over them and keeps the public names importable from here.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from text2sql.eval.compare import (
    MAX_PLUG_VARIANTS,
    first_statement,
    order_matters,
    plug_value_variants,
    postprocess,
    remove_distinct,
    replace_cur_year,
)
from text2sql.eval.pool import _shutdown, _Worker
from text2sql.eval.progress import progress_bar
from text2sql.machine.threads import usable_cpus
from text2sql.eval.query import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    QueryResult,
    _ConnCache,
    _answer_item,
)
from text2sql.sql.sqlite_guard import DEFAULT_HEAP_LIMIT

__all__ = ["STATUSES", "Verdict", "ExecutionEvaluator", "db_files"]

STATUSES = ("correct", "wrong_result", "syntax_error", "exec_error", "timeout", "write_refused", "db_missing",
            "empty_prediction")

_WATCHDOG_SLACK_S = 5.0


@dataclass
class Verdict:
    correct: bool
    status: str
    hardness: str | None  # the level: Spider's easy/medium/hard/extra (from the gold query) or BIRD's difficulty
    db_id: str
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def missing_databases_warning(db_dir: str | os.PathLike, db_ids: list[str]) -> str | None:
    """One line naming the databases of `db_ids` (one per example) absent under `db_dir` and the execution
    accuracy their examples leave reachable (they are all `db_missing`); None when every database is there."""
    counts: dict[str, int] = {}
    for db_id in db_ids:
        counts[db_id] = counts.get(db_id, 0) + 1
    missing = {d: n for d, n in sorted(counts.items()) if not db_files(db_dir, d)}
    if not missing:
        return None
    lost = sum(missing.values())
    names = ", ".join(f"{d} ({n})" for d, n in list(missing.items())[:5]) + (" ..." if len(missing) > 5 else "")
    return (f"{lost} of {len(db_ids)} dev examples have no database under {db_dir}: {names}; they count as "
            f"db_missing, so execution accuracy is at most {1 - lost / len(db_ids):.3f}")


MAX_DEFAULT_WORKERS = 8
WORKERS_HELP = f"one per usable CPU, at most {MAX_DEFAULT_WORKERS}"  # what workers=None means, said everywhere alike


def default_workers() -> int:
    """Worker processes when none are asked for: one per CPU this process may use (execution is CPU-bound;
    an affinity mask or a cgroup quota counts), capped."""
    return min(usable_cpus(), MAX_DEFAULT_WORKERS)


class ExecutionEvaluator:
    """Execution accuracy with official Spider semantics (``style="spider"``) or BIRD's (``style="bird"``, see
    :mod:`text2sql.eval.style`); safe, bounded and parallel.

    ``workers``: number of worker processes (``None``: ``WORKERS_HELP``; ``0``: run in this process, without
    crash isolation or the watchdog).
    """

    def __init__(self, db_dir, *, timeout: float = 30.0, workers: int | None = None,
                 plug_value: bool = False, keep_distinct: bool = False, test_suite: bool = False,
                 max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES,
                 heap_limit: int | None = DEFAULT_HEAP_LIMIT, max_plug_variants: int = MAX_PLUG_VARIANTS,
                 style: str = "spider") -> None:
        from text2sql.eval.style import get_style

        self.style = get_style(style)
        if not self.style.normalise and (plug_value or keep_distinct):
            raise ValueError(f"plug_value / keep_distinct are Spider's options; the {style} rule runs queries as "
                             "written")
        self.db_dir = Path(db_dir)
        if not self.db_dir.is_dir():
            raise FileNotFoundError(f"database directory not found: {self.db_dir}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.workers = default_workers() if workers is None else max(int(workers), 0)
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

    def _prepare_pred(self, pred: str) -> str:
        if not self.style.normalise:  # BIRD: run as written
            return pred.strip()
        p = postprocess(pred.strip().replace(" value ", " 1 "))
        if not self.keep_distinct:  # official: the first statement only; --keep-distinct runs the whole string
            p = remove_distinct(first_statement(p))
        return replace_cur_year(p)

    def _prepare(self, gold: str, pred: str) -> tuple[str, list[str], bool]:
        if not self.style.normalise:  # BIRD: both queries run as written
            return gold.strip(), [pred.strip()], False
        g, ordered = self._prepare_gold(gold)
        p = self._prepare_pred(pred)
        candidates = [p]
        if self.plug_value:
            candidates += plug_value_variants(g, p, self.max_plug_variants)
        return g, candidates, ordered

    # -- evaluation
    def evaluate(self, items: Sequence[tuple[str, str, str]], progress: bool = False,
                 levels: Sequence[str | None] | None = None) -> list[Verdict]:
        """Verdicts for ``items`` = (db_id, gold_sql, pred_sql), in order. ``levels``: each item's stated level
        (BIRD's difficulty); where None, Spider's rule derives it from the gold SQL (hardness), BIRD's leaves it."""
        if self._closed:
            raise RuntimeError("ExecutionEvaluator is closed")
        items = list(items)
        stated = list(levels) if levels is not None else [None] * len(items)
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
                todo.append((i, {"paths": files, "gold": g, "candidates": candidates, "ordered": ordered,
                                 "rule": self.style.rule}))

        def finish(i: int, res: dict) -> None:
            results[i] = (res["status"], res.get("error"))
            advance(1)

        def derive() -> list[str | None]:
            from text2sql.sql.hardness import hardness

            derive_ = self.style.derive_levels
            return [lv if lv is not None or not derive_ else hardness(gold) for lv, (_, gold, _) in zip(stated, items)]

        with progress_bar("evaluating", len(items), enabled=progress) as advance:
            advance(len(items) - len(todo))
            if self.workers == 0:
                self._run_local(todo, finish)
                levels = derive()
            else:
                levels = self._run_pool(todo, finish, derive)  # hardness (sqlglot) runs here while workers execute
        out = []
        for (db_id, _, _), level, res in zip(items, levels, results):
            status, error = res if res is not None else ("exec_error", "not evaluated")
            out.append(Verdict(status == "correct", status, level, db_id, error))
        return out

    def db_file(self, db_id: str) -> str:
        """The main SQLite file of `db_id` ("" when missing): what :meth:`run_sql` takes."""
        files = self._files(db_id)
        return files[0] if files else ""

    def run_sql(self, items: Sequence[tuple[str, str]]) -> list[dict]:
        """Run each (database file, sql) as a prediction is run (same preparation, guard, timeout, worker pool), with
        no gold: {status ("ok" or a failure status), error, rows (count), key (a result digest)}, in order."""
        if self._closed:
            raise RuntimeError("ExecutionEvaluator is closed")
        results: list[dict | None] = [None] * len(items)
        todo: list[tuple[int, dict]] = []
        for i, (path, sql) in enumerate(items):
            sql = self._prepare_pred(sql or "") if (sql or "").strip().strip(";").strip() else ""
            if not path or not os.path.isfile(path):
                results[i] = {"status": "db_missing", "error": f"database not found: {path}", "rows": 0, "key": None}
            elif not sql:
                results[i] = {"status": "empty_prediction", "error": None, "rows": 0, "key": None}
            else:
                todo.append((i, {"paths": [path], "sql": sql}))

        def finish(i: int, res: dict) -> None:
            results[i] = {"rows": 0, "key": None, **res}

        if self.workers == 0:
            self._run_local(todo, finish)
        else:
            self._run_pool(todo, finish, lambda: None)
        return results

    def _run_local(self, todo, finish) -> None:
        if self._local_conns is None:
            self._local_conns = _ConnCache(heap_limit=None)  # never cap the caller's own process
        for i, item in todo:
            res = _answer_item(item, self._local_conns, self._gold_cache, self._opts)
            finish(i, res)

    def _item_budget(self, item: dict) -> float:
        if "sql" in item:  # one candidate, no gold (run_sql)
            return 2 * self.timeout + 0.5 + _WATCHDOG_SLACK_S
        n_paths = len(item["paths"])
        n = n_paths + sum(1 for p in item["paths"] if (p, item["gold"]) not in self._gold_cache)
        n += 1 if len(item["candidates"]) > 1 else 0  # all plug-value variants share one timeout
        return n * (2 * self.timeout + 0.5) + _WATCHDOG_SLACK_S  # queries + comparisons + slack

    def _run_pool(self, todo, finish, meanwhile: Callable[[], Any]) -> Any:
        """Run `todo` on the worker pool (one feeding thread per worker) while `meanwhile()` runs here."""
        n_workers = max(1, min(self.workers, len(todo)))
        while len(self._pool) < n_workers:
            self._pool.append(None)
        chunk = max(1, min(self.chunk_size, math.ceil(len(todo) / (n_workers * 4)) if todo else 1))
        run = _PoolRun(self, deque(todo), chunk, finish)
        threads = [threading.Thread(target=run.loop, args=(s,), daemon=True) for s in range(n_workers)]
        for t in threads:
            t.start()
        try:
            value = meanwhile()
        finally:
            for t in threads:
                t.join()
        if run.errors:
            raise run.errors[0]
        return value

    # -- convenience
    def gold_cache_size(self) -> int:
        return len(self._gold_cache)


class _PoolRun:
    """One `evaluate` call's work queue, shared by the threads that feed the workers (one thread per slot)."""

    def __init__(self, ev: ExecutionEvaluator, queue: deque, chunk: int, finish: Callable[[int, dict], None]):
        self.ev, self.queue, self.chunk, self.finish = ev, queue, chunk, finish
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    def take(self) -> list[tuple[int, dict]]:
        with self.lock:
            out = []
            while self.queue and len(out) < self.chunk:
                out.append(self.queue.popleft())
            return out

    def attach_gold(self, worker: _Worker, item: dict) -> dict:
        """The item with the gold results this worker has not seen yet (so it never re-runs a gold query)."""
        rows = {}
        for p in item["paths"] if "gold" in item else ():
            key = (p, item["gold"])
            if key in worker.known_gold:
                continue
            g = self.ev._gold_cache.get(key)
            if g is not None:
                rows[p] = g
                worker.known_gold.add(key)
        return dict(item, gold_rows=rows) if rows else item

    def worker(self, slot: int) -> _Worker:
        """The slot's live worker, replacing a dead (or killed) one."""
        worker = self.ev._pool[slot]
        if worker is None or worker.proc.poll() is not None:
            if worker is not None:
                worker.kill()
            worker = self.ev._pool[slot] = _Worker(self.ev._opts)
        return worker

    def loop(self, slot: int) -> None:
        try:
            while batch := self.take():
                worker = self.worker(slot)
                with self.lock:
                    payload = [(i, self.attach_gold(worker, item)) for i, item in batch]
                worker.send_conn.send(payload)
                self.collect(slot, worker, deque(batch))
        except BaseException as err:  # noqa: BLE001 - reported in the caller's thread
            self.errors.append(err)

    def collect(self, slot: int, worker: _Worker, pending: deque) -> None:
        """Answers for `pending`, in order; a crashed or stuck worker loses its current item, the rest is requeued."""
        while pending:
            i, item = pending[0]
            budget = self.ev._item_budget(item) + 1.0
            answers, failure = None, "timeout"
            if worker.recv_conn.poll(budget):
                try:
                    answers = worker.recv_conn.recv()
                except (EOFError, OSError):
                    answers = None
                failure = "crash"
            if answers is None:
                self.lose(slot, worker, pending, failure, budget)
                return
            for j, res in answers:
                i, item = pending.popleft()
                assert j == i, (j, i)
                new_gold = res.pop("new_gold", None)
                if new_gold:
                    with self.lock:
                        for p, g in new_gold.items():
                            self.ev._gold_cache[(p, item["gold"])] = g
                            worker.known_gold.add((p, item["gold"]))
                self.finish(i, res)

    def lose(self, slot: int, worker: _Worker, pending: deque, failure: str, budget: float) -> None:
        code = worker.proc.poll()
        worker.kill()
        self.ev._pool[slot] = None
        if failure == "timeout":
            res = {"status": "timeout", "error": f"no answer within {budget:.0f} s: worker killed"}
        else:
            res = {"status": "exec_error", "error": f"worker crashed (exit code {code})"}
        i, _ = pending.popleft()
        self.finish(i, res)
        with self.lock:
            self.queue.extendleft(reversed(list(pending)))
