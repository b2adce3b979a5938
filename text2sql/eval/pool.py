"""Worker processes for the evaluator: each is a fresh interpreter (``python -m text2sql.eval.pool --worker``,
never a fork of a caller holding torch threads, never an import of its ``__main__``) that keeps its own
connections and gold results and answers chunks of examples over a pipe. The parent's watchdog (in
:class:`~text2sql.eval.execute.ExecutionEvaluator`) kills a worker that stays silent past an example's budget.

Why not a library pool (e.g. pebble's ``ProcessPool``, which has hard-kill timeouts): its workers are
``multiprocessing`` children (a fork of the training process, or a spawn that re-imports its ``__main__``),
its timeouts apply per task, not per example inside a chunk, and it does not keep a worker's connections and
cached gold results tied to the examples it is sent; what is left here is small.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from text2sql.eval.query import _answer_item, _ConnCache

__all__: list[str] = []


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
                res = _answer_item(item, conns, gold_cache, opts)
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
                [sys.executable, "-m", "text2sql.eval.pool", "--worker", str(p2c_r), str(c2p_w)],
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


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--worker":
        import signal

        for signum in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C or preemption of the group: the parent decides
            signal.signal(signum, signal.SIG_IGN)  # (it stops or kills its workers; a lost parent is EOF here)
        # run the loop from the importable module so that pickled classes resolve in the parent
        from text2sql.eval import pool as module

        module._worker_main(int(argv[1]), int(argv[2]))
        return 0
    print("usage: python -m text2sql.eval.pool --worker RFD WFD (internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
