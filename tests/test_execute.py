"""Execution safety and robustness: read-only, timeouts, caps, statuses, workers, gold cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from text2sql.eval.execute import STATUSES, ExecutionEvaluator, Verdict, db_files
from text2sql.eval.query import execute_query
from text2sql.sql.sqlite_guard import open_readonly


def _make_db(path: Path, rows: int = 50) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, v REAL)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i}", i / 3) for i in range(rows)])
    conn.execute("CREATE TABLE empty (x INTEGER)")
    conn.commit()
    conn.close()


@pytest.fixture()
def db_dir(tmp_path):
    _make_db(tmp_path / "db" / "shop" / "shop.sqlite")
    # a second database, the target of ATTACH attempts
    _make_db(tmp_path / "db" / "other" / "other.sqlite", rows=3)
    return tmp_path / "db"


def _sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


WRITES = [
    "DROP TABLE t",
    "DROP TABLE empty",
    "DELETE FROM t",
    "DELETE FROM empty",
    "UPDATE t SET name = 'x'",
    "INSERT INTO t (name) VALUES ('x')",
    "INSERT INTO empty VALUES (1)",
    "REPLACE INTO t VALUES (1, 'x', 0)",
    "CREATE TABLE evil (a)",
    "CREATE INDEX evil_idx ON t (name)",
    "CREATE TEMP TABLE evil (a)",
    "CREATE VIEW evil AS SELECT 1",
    "ALTER TABLE t ADD COLUMN evil TEXT",
    "ATTACH DATABASE '{other}' AS o",
    "ATTACH DATABASE '{tmp}/new.sqlite' AS o",
    "PRAGMA writable_schema = ON",
    "PRAGMA writable_schema = 1; UPDATE sqlite_master SET sql = 'x'",
    "UPDATE sqlite_master SET sql = 'x' WHERE name = 't'",
    "CREATE TRIGGER evil AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "DETACH DATABASE main",
    "SAVEPOINT s",
    "PRAGMA writable_schema",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "PRAGMA query_only = OFF",
    "VACUUM",
    "VACUUM INTO '{tmp}/copy.sqlite'",
    "REINDEX",
    "ANALYZE",
    "BEGIN",
    "WITH x AS (SELECT 1) DELETE FROM t",
]
# A write after a first SELECT: the official default mode executes the first statement only (its DISTINCT
# removal keeps sqlparse's first statement), so these are refused only with keep_distinct (whole string run).
TAIL_WRITES = ["SELECT 1; DROP TABLE t", "SELECT * FROM empty; DELETE FROM t"]


@pytest.mark.parametrize("workers", [0, 1])
def test_writes_are_refused_and_files_unchanged(db_dir, tmp_path, workers):
    before = _sha(db_dir)
    other = db_dir / "other" / "other.sqlite"
    preds = [w.format(other=other, tmp=tmp_path) for w in WRITES]
    # gold results are empty: the official evaluator would call a DROP/DELETE "correct" here
    with ExecutionEvaluator(db_dir, workers=workers, timeout=5) as ev:
        verdicts = ev.evaluate([("shop", "SELECT x FROM empty", p) for p in preds])
        again = ev.evaluate([("shop", "SELECT count(*) FROM t", "SELECT count(*) FROM t")])
    with ExecutionEvaluator(db_dir, workers=workers, timeout=5, keep_distinct=True) as ev:
        preds += TAIL_WRITES
        verdicts += ev.evaluate([("shop", "SELECT x FROM empty", p) for p in TAIL_WRITES])
    for pred, v in zip(preds, verdicts):
        assert v.status == "write_refused", (pred, v)
        assert v.correct is False
    assert again[0].status == "correct"
    assert _sha(db_dir) == before
    assert not (tmp_path / "new.sqlite").exists() and not (tmp_path / "copy.sqlite").exists()
    assert not list(db_dir.rglob("*-journal")) and not list(db_dir.rglob("*-wal"))


def test_read_pragmas_and_selects_are_allowed(db_dir):
    with ExecutionEvaluator(db_dir, workers=0, timeout=5) as ev:
        v = ev.evaluate([("shop", "SELECT name FROM t WHERE id < 3", "SELECT name FROM t WHERE id < 3"),
                         ("shop", "SELECT 1", "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c "
                                              "WHERE n < 1) SELECT n FROM c"),
                         ("shop", "SELECT 1", "PRAGMA table_info(t)")])
    assert [x.status for x in v] == ["correct", "correct", "wrong_result"]


@pytest.mark.parametrize("workers", [0, 1])
def test_endless_recursive_cte_times_out(db_dir, workers):
    pred = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c"
    with ExecutionEvaluator(db_dir, workers=workers, timeout=1.0) as ev:
        ev.evaluate([("shop", "SELECT 1", "SELECT 1")])  # start the worker outside the measured time
        t0 = time.monotonic()
        (v,) = ev.evaluate([("shop", "SELECT count(*) FROM t", pred)])
        elapsed = time.monotonic() - t0
    assert v.status == "timeout", v
    assert elapsed < 1.0 + 2.0


def test_huge_cross_join_is_capped(db_dir):
    # 50**5 = 312 million rows: streamed until the row cap, never materialised
    pred = "SELECT * FROM t a, t b, t c, t d, t e"
    with ExecutionEvaluator(db_dir, workers=1, timeout=20, max_rows=100_000) as ev:
        t0 = time.monotonic()
        (v,) = ev.evaluate([("shop", "SELECT * FROM t", pred)])
        assert time.monotonic() - t0 < 15
    assert v.status == "wrong_result" and "cap" in (v.error or "")


def test_huge_sorted_cross_join_is_bounded(db_dir):
    # sorting needs the whole join: hits the time limit or SQLite's heap limit, not the machine's memory
    pred = "SELECT a.name || b.name || c.name || d.name FROM t a, t b, t c, t d ORDER BY 1 DESC"
    with ExecutionEvaluator(db_dir, workers=1, timeout=2, heap_limit=64 * 1024 * 1024) as ev:
        t0 = time.monotonic()
        (v,) = ev.evaluate([("shop", "SELECT * FROM t", pred)])
        assert time.monotonic() - t0 < 2 + 8
    assert v.status in ("timeout", "exec_error"), v
    assert not v.correct


def test_statuses(db_dir):
    items = [
        ("shop", "SELECT name FROM t", "SELECT name FROM t"),
        ("shop", "SELECT name FROM t", "SELECT id FROM t"),
        ("shop", "SELECT name FROM t", "SELEC name FROM t"),
        ("shop", "SELECT name FROM t", "SELECT name FROM t WHERE (id"),
        ("shop", "SELECT name FROM t", "SELECT nope FROM t"),
        ("shop", "SELECT name FROM t", "SELECT name FROM missing_table"),
        ("shop", "SELECT name FROM t", "DROP TABLE t"),
        ("nowhere", "SELECT name FROM t", "SELECT name FROM t"),
        ("shop", "SELECT name FROM t", ""),
        ("shop", "SELECT name FROM t", "  ;  "),
        ("shop", "SELECT nope FROM t", "SELECT name FROM t"),  # broken gold: never correct
    ]
    with ExecutionEvaluator(db_dir, workers=0, timeout=5) as ev:
        verdicts = ev.evaluate(items)
    assert [v.status for v in verdicts] == [
        "correct", "wrong_result", "syntax_error", "syntax_error", "exec_error", "exec_error",
        "write_refused", "db_missing", "empty_prediction", "empty_prediction", "exec_error"]
    assert all(isinstance(v, Verdict) and v.status in STATUSES for v in verdicts)
    assert [v.correct for v in verdicts] == [True] + [False] * 10
    assert verdicts[7].db_id == "nowhere" and "gold" in verdicts[10].error
    assert all(v.hardness == "easy" for v in verdicts)


def test_missing_db_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ExecutionEvaluator(tmp_path / "nope")


def test_non_utf8_text_is_decoded(tmp_path):
    path = tmp_path / "db" / "latin" / "latin.sqlite"
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE p (name TEXT)")
    conn.execute("INSERT INTO p VALUES (CAST(X'4DFC6C6C6572' AS TEXT))")  # 'Müller' in latin-1
    conn.execute("INSERT INTO p VALUES ('plain')")
    conn.commit()
    conn.close()
    with ExecutionEvaluator(tmp_path / "db", workers=1, timeout=5) as ev:
        v = ev.evaluate([("latin", "SELECT name FROM p", "SELECT name FROM p"),
                         ("latin", "SELECT name FROM p", "SELECT 'plain'")])
    assert [x.status for x in v] == ["correct", "wrong_result"]


def test_gold_results_cached_across_calls(db_dir):
    db = db_dir / "shop" / "shop.sqlite"
    for workers in (0, 2):
        with ExecutionEvaluator(db_dir, workers=workers, timeout=5) as ev:
            items = [("shop", "SELECT count(*) FROM t", "SELECT count(*) FROM t")] * 3
            assert [v.status for v in ev.evaluate(items)] == ["correct"] * 3
            assert ev.gold_cache_size() == 1
            # change the database behind the evaluator's back: the cached gold no longer agrees
            conn = sqlite3.connect(db)
            conn.execute("INSERT INTO t (name) VALUES ('late')")
            conn.commit()
            conn.close()
            assert [v.status for v in ev.evaluate(items)] == ["wrong_result"] * 3
            conn = sqlite3.connect(db)
            conn.execute("DELETE FROM t WHERE name = 'late'")
            conn.commit()
            conn.close()


def test_killed_worker_is_replaced(db_dir):
    with ExecutionEvaluator(db_dir, workers=1, timeout=5) as ev:
        assert ev.evaluate([("shop", "SELECT 1", "SELECT 1")])[0].correct
        worker = ev._pool[0]
        worker.proc.kill()
        worker.proc.wait()
        v = ev.evaluate([("shop", "SELECT name FROM t", "SELECT name FROM t")] * 4)
        assert [x.status for x in v] == ["correct"] * 4


def test_test_suite_mode(tmp_path):
    folder = tmp_path / "db" / "shop"
    _make_db(folder / "shop.sqlite", rows=5)
    _make_db(folder / "shop_1.sqlite", rows=9)  # a distilled variant with other contents
    assert [os.path.basename(p) for p in db_files(tmp_path / "db", "shop", True)] == ["shop.sqlite",
                                                                                     "shop_1.sqlite"]
    gold = "SELECT name FROM t WHERE id < 7"
    pred = "SELECT name FROM t"  # same result on the 5-row db only
    with ExecutionEvaluator(tmp_path / "db", workers=0) as ev:
        assert ev.evaluate([("shop", gold, pred)])[0].status == "correct"
    with ExecutionEvaluator(tmp_path / "db", workers=0, test_suite=True) as ev:
        v = ev.evaluate([("shop", gold, pred), ("shop", gold, gold)])
    assert [x.status for x in v] == ["wrong_result", "correct"]
    assert "shop_1.sqlite" in v[0].error


def test_no_torch_import():
    import subprocess
    import sys

    code = ("import sys; import text2sql.eval.execute, text2sql.eval.compare, text2sql.sql.hardness, "
            "text2sql.eval.metrics, text2sql.eval.evaluate, text2sql.eval.match, text2sql.eval.pool, "
            "text2sql.eval.query, text2sql.sql.sqlite_guard; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_summarize():
    from text2sql.eval.metrics import summarize

    vs = [Verdict(True, "correct", "easy", "a"), Verdict(False, "timeout", "easy", "a"),
          Verdict(False, "wrong_result", "hard", "b"), {"correct": True, "status": "correct", "hardness": "hard",
                                                         "db_id": "b"}]
    s = summarize(vs)
    assert s["execution_accuracy"] == 0.5 and s["count"] == 4
    assert s["ex_easy"] == 0.5 and s["ex_hard"] == 0.5 and "ex_medium" not in s and "ex_extra" not in s
    assert s["status/correct"] == 0.5 and s["status/timeout"] == 0.25 and s["status/db_missing"] == 0.0
    assert set(k for k in s if k.startswith("status/")) == {f"status/{x}" for x in STATUSES}
    assert summarize([])["execution_accuracy"] == 0.0


def test_worker_crash_mid_query_costs_one_example(db_dir):
    import threading

    slow = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) SELECT count(*) FROM c"
    items = [("shop", "SELECT 1", slow)] + [("shop", "SELECT name FROM t", "SELECT name FROM t")] * 3
    with ExecutionEvaluator(db_dir, workers=1, timeout=10) as ev:
        assert ev.evaluate([("shop", "SELECT 1", "SELECT 1")])[0].correct  # worker is up
        victim = ev._pool[0].proc
        killer = threading.Timer(1.0, victim.kill)
        killer.start()
        t0 = time.monotonic()
        verdicts = ev.evaluate(items)
        killer.join()
        assert time.monotonic() - t0 < 8
    assert verdicts[0].status == "exec_error" and "crashed" in verdicts[0].error
    assert [v.status for v in verdicts[1:]] == ["correct"] * 3


def test_close_stops_workers(db_dir):
    ev = ExecutionEvaluator(db_dir, workers=2, timeout=5)
    ev.evaluate([("shop", "SELECT 1", "SELECT 1")] * 4)
    procs = [w.proc for w in ev._pool]
    ev.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError):
        ev.evaluate([("shop", "SELECT 1", "SELECT 1")])


def test_evaluator_pickles_without_workers(db_dir):
    import pickle

    with ExecutionEvaluator(db_dir, workers=1, timeout=5) as ev:
        assert ev.evaluate([("shop", "SELECT 1", "SELECT 1")])[0].correct
        clone = pickle.loads(pickle.dumps(ev))
    try:
        assert clone.gold_cache_size() == 1 and clone._pool == []
        assert clone.evaluate([("shop", "SELECT 1", "SELECT 1")])[0].correct  # workers restart on demand
    finally:
        clone.close()


def test_plug_value_variants_share_one_time_budget(db_dir):
    # every variant of this prediction runs into the timeout: the example still ends within ~2 timeouts
    slow = ("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n > 0 OR n = 7) "
            "SELECT count(*) FROM c WHERE n = 3 OR n = 4 OR n = 5")
    gold = "SELECT id FROM t WHERE id = 1 OR id = 2 OR id = 3 OR id = 4"
    with ExecutionEvaluator(db_dir, workers=0, timeout=1.0, plug_value=True) as ev:
        t0 = time.monotonic()
        (v,) = ev.evaluate([("shop", gold, slow)])
        elapsed = time.monotonic() - t0
    assert v.status == "timeout"
    assert elapsed < 2 * 1.0 + 1.5


# (prediction, verdict in the default mode, verdict with keep_distinct) against gold "SELECT count(*) FROM t".
# Official test-suite evaluator: default mode runs sqlparse's first statement only; keep_distinct runs the
# whole string through sqlite3, which refuses a second statement (a lone ";" counts) but allows comments.
MULTI_STATEMENTS = [
    ("SELECT count(*) FROM t; ;", "correct", "syntax_error"),
    ("SELECT count(*) FROM t;;", "correct", "syntax_error"),
    ("SELECT count(*) FROM t; DROP TABLE t", "correct", "write_refused"),
    ("SELECT count(*) FROM t; DELETE FROM t; DROP TABLE empty", "correct", "write_refused"),
    ("SELECT count(*) FROM t; -- a trailing comment", "correct", "correct"),
    ("SELECT count(*) FROM t -- a trailing comment", "correct", "correct"),
    ("SELECT count(*) FROM t; /* a comment */", "correct", "correct"),
    ("SELECT count(DISTINCT id) FROM t; SELECT 1", "correct", "syntax_error"),
    ("SELECT id FROM t; SELECT count(*) FROM t", "wrong_result", "syntax_error"),
    # the first statement holds no SQL: officially it executes to an empty result
    ("; SELECT count(*) FROM t", "wrong_result", "correct"),
    ("SELECT 'a;b' = 'a;b' FROM t WHERE 0; SELECT count(*) FROM t", "wrong_result", "syntax_error"),
]


@pytest.mark.parametrize("keep_distinct", [False, True])
def test_multi_statement_predictions_get_the_official_verdict(db_dir, keep_distinct):
    before = _sha(db_dir)
    with ExecutionEvaluator(db_dir, workers=0, timeout=5, keep_distinct=keep_distinct) as ev:
        verdicts = ev.evaluate([("shop", "SELECT count(*) FROM t", p) for p, _, _ in MULTI_STATEMENTS])
        empty = ev.evaluate([("shop", "SELECT x FROM empty", "SELECT * FROM empty; DELETE FROM t")])[0]
    want = [k if keep_distinct else d for _, d, k in MULTI_STATEMENTS]
    assert [v.status for v in verdicts] == want, [p for (p, _, _), v, w in zip(MULTI_STATEMENTS, verdicts, want)
                                                  if v.status != w]
    # officially correct in the default mode (the DELETE is never run); refused when the whole string runs
    assert empty.status == ("write_refused" if keep_distinct else "correct")
    assert _sha(db_dir) == before


def test_execute_query_refuses_writes_and_reads_rows(db_dir):
    """The read-only guard and one query, as the worker pool uses them."""
    conn, guard = open_readonly(db_dir / "shop" / "shop.sqlite", heap_limit=None)
    assert execute_query(conn, guard, "SELECT count(*) FROM t", timeout=5).rows == [(50,)]
    assert execute_query(conn, guard, "DELETE FROM t", timeout=5).status == "write_refused"
    conn.close()
