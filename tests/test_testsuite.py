"""`text2sql testsuite build`: a distilled test suite for the generated sample's databases, scored by `evaluate`.

One small build (few candidates and mutants) is shared by the module; a second build with the same seed (through
worker processes instead of in-process) must give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from text2sql.cli import main

BUILD = ["--per-db", "8", "--mutants", "8", "--seed", "3"]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from text2sql.data.sample import ensure_sample

    tmp = tmp_path_factory.mktemp("testsuite")
    data = ensure_sample(tmp / "data", seed=0, n_train=20, n_dev=40)
    before = _hashes(data / "database")
    out = tmp / "suite"
    assert main(["testsuite", "build", "--data", str(data), "--out", str(out), "--workers", "0", *BUILD]) == 0
    return data, out, before


def _evaluate(capsys, gold: Path, pred: Path, db: Path, *extra: str) -> float:
    capsys.readouterr()
    out = pred.parent / f"{pred.stem}{'_ts' if extra else ''}.jsonl"
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(db), "--workers", "0",
                 "--no-progress", "--out", str(out), *extra]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return sum(r["correct"] for r in rows) / len(rows)


def test_layout_manifest_and_originals_untouched(built):
    data, out, before = built
    assert _hashes(data / "database") == before  # the originals were never written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["style"] == "spider" and manifest["layout"] == "spider"
    assert set(manifest["databases"]) == {p.name for p in (data / "database").iterdir()}
    for db_id, entry in manifest["databases"].items():
        files = sorted(p.name for p in (out / "database" / db_id).iterdir())
        assert files[0] == f"{db_id}.sqlite"  # the original, copied, first
        assert (out / "database" / db_id / files[0]).read_bytes() == (data / "database" / db_id / files[0]).read_bytes()
        assert len(files) == 1 + entry["neighbours_kept"] >= 2
        assert entry["killed_by_original"] <= entry["killed_by_suite"] <= entry["mutants"]
        assert entry["candidates_tried"] <= 8
    totals = manifest["totals"]
    assert totals["killed_by_suite"] > totals["killed_by_original"]  # the neighbours see what the original cannot


def test_neighbours_keep_the_schema_and_are_small(built):
    data, out, _ = built
    db_id = "company"
    original = sqlite3.connect(data / "database" / db_id / f"{db_id}.sqlite")
    schema = sorted(original.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    for path in sorted((out / "database" / db_id).glob("*_ts*.sqlite")):
        conn = sqlite3.connect(path)
        assert sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()) == schema
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []  # every reference points at a parent row
        assert not conn.execute("SELECT 1 FROM employee WHERE employee_id IS NULL").fetchall()
        assert conn.execute("SELECT count(*) FROM employee").fetchone()[0] <= 20
        conn.close()
    original.close()


def test_gold_against_itself_on_the_suite_is_100_percent(built, capsys):
    _, out, _ = built
    gold = out / "dev_gold.sql"
    pred = out.parent / "gold_as_pred.sql"
    pred.write_text("".join(line.split("\t")[0] + "\n" for line in gold.read_text().splitlines()))
    assert _evaluate(capsys, gold, pred, out / "database", "--test-suite") == 1.0


def test_suite_rejects_what_ex_accepts_and_keeps_a_correct_rewrite(built, capsys):
    """A near-miss the original database cannot tell from gold (EX says correct) is rejected by the suite; the gold
    query rewritten (sqlglot's rendering, other spacing and case) stays correct on every neighbour."""
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.testsuite.mutate import all_mutants, parse, render
    from text2sql.testsuite.schema import read_db

    data, out, _ = built
    gold_lines = [line.split("\t") for line in (out / "dev_gold.sql").read_text().splitlines()]
    found = None
    with ExecutionEvaluator(out / "database", workers=0) as ex, \
            ExecutionEvaluator(out / "database", workers=0, test_suite=True) as ts:
        for gold, db_id in gold_lines:
            schema = read_db(data / "database" / db_id / f"{db_id}.sqlite", db_id)
            items = [(db_id, gold, m) for kind, m in all_mutants(gold, schema) if kind in ("boundary", "comparison")]
            for item, a, b in zip(items, ex.evaluate(items), ts.evaluate(items)):
                if a.correct and not b.correct:
                    found = item
                    break
            if found:
                break
    assert found is not None, "no near-miss that the original database accepts and the suite rejects"
    db_id, gold, wrong = found
    right = render(parse(gold)).lower().replace(" ", "  ")
    (out.parent / "one_gold.sql").write_text(f"{gold}\t{db_id}\n{gold}\t{db_id}\n")
    (out.parent / "one_pred.sql").write_text(f"{wrong}\n{right}\n")
    gold_file, pred_file = out.parent / "one_gold.sql", out.parent / "one_pred.sql"
    assert _evaluate(capsys, gold_file, pred_file, data / "database") == 1.0  # EX: both "correct"
    assert _evaluate(capsys, gold_file, pred_file, out / "database", "--test-suite") == 0.5  # the suite: only one
    from text2sql.eval.suite import suite_verdicts

    verdicts = suite_verdicts(out, [(db_id, gold, wrong), (db_id, gold, right)], workers=0)
    assert [v.correct for v in verdicts] == [False, True]


def test_suite_tells_count_star_from_count_of_a_nullable_column(built, capsys):
    """The sample's originals have no NULLs, so EX cannot tell `COUNT(*)` from `COUNT(col)`; the suite (whose sparse
    neighbours leave some nullable columns mostly NULL) rejects such a prediction and keeps gold."""
    from text2sql.eval.suite import suite_verdicts
    from text2sql.testsuite.mutate import all_mutants
    from text2sql.testsuite.schema import read_db

    data, out, _ = built
    gold_lines = [line.split("\t") for line in (out / "dev_gold.sql").read_text().splitlines()]
    items = []
    for gold, db_id in gold_lines:
        if "count(*)" in gold.lower():
            schema = read_db(data / "database" / db_id / f"{db_id}.sqlite", db_id)
            items += [(db_id, gold, m) for kind, m in all_mutants(gold, schema) if kind == "count_null"]
    assert items
    from text2sql.eval.execute import ExecutionEvaluator

    with ExecutionEvaluator(data / "database", workers=0) as ex:
        on_original = ex.evaluate(items)
    suite = suite_verdicts(out, items, workers=0)
    caught = [item for item, a, b in zip(items, on_original, suite) if a.correct and not b.correct]
    assert caught, "no COUNT(col) prediction that EX accepts and the suite rejects"
    db_id, gold, wrong = caught[0]
    star = lambda sql: sql.upper().replace(" ", "").count("COUNT(*)")  # noqa: E731
    assert star(wrong) == star(gold) - 1  # one COUNT(*) became COUNT(col)
    assert [v.correct for v in suite_verdicts(out, [(db_id, gold, gold)], workers=0)] == [True]


def test_sparse_neighbours_null_some_columns_often_and_others_never(built):
    """Profiles differ in kind: in some neighbours one nullable column of a table is mostly NULL while another of the
    same table has none; every neighbour is a function of its seed."""
    import random

    from text2sql.testsuite.fill import neighbour_rows
    from text2sql.testsuite.schema import read_db

    data, _, _ = built
    schema = read_db(data / "database" / "company" / "company.sqlite", "company")
    nullable = [i for i, c in enumerate(schema.table("employee").columns) if not c.notnull and not c.pk]
    mixed = 0
    for k in range(40):
        rows = neighbour_rows(schema, {}, random.Random(k))["employee"]
        assert rows == neighbour_rows(schema, {}, random.Random(k))["employee"]
        if len(rows) < 6:
            continue
        share = [sum(r[i] is None for r in rows) / len(rows) for i in nullable]
        mixed += max(share) >= 0.5 and min(share) == 0
    assert mixed >= 2


@pytest.mark.slow
def test_same_seed_same_bytes_through_worker_processes(built, tmp_path):
    data, out, _ = built
    again = tmp_path / "again"
    assert main(["testsuite", "build", "--data", str(data), "--out", str(again), "--workers", "1", "--no-progress",
                 *BUILD]) == 0
    assert _hashes(again) == _hashes(out)


def _one_line_error(capsys, argv: list[str], pattern: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("text2sql testsuite: error:"), err
    assert pattern in err, err


def test_bad_inputs_are_one_line(built, tmp_path, capsys):
    data, out, _ = built
    build = ["testsuite", "build", "--workers", "0", "--no-progress", "--per-db", "2", "--mutants", "2"]
    _one_line_error(capsys, [*build, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "not found")
    _one_line_error(capsys, [*build, "--data", str(tmp_path), "--out", str(tmp_path / "o")], "not a dataset")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dev.json").write_text(json.dumps([{"db_id": "gone", "question": "q", "query": "SELECT 1"}]))
    _one_line_error(capsys, [*build, "--data", str(empty), "--out", str(tmp_path / "o")], "no databases found")
    _one_line_error(capsys, [*build, "--data", str(data), "--out", str(out)], "not empty")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, [*build, "--data", str(data), "--out", str(blocker / "suite")], "cannot write")


def test_a_schema_sqlite_cannot_recreate_is_one_line(tmp_path, capsys):
    """A column collated by a function registered only in the process that made the file: readable, but no new file
    can declare it."""
    root = tmp_path / "mine"
    (root / "database" / "odd").mkdir(parents=True)
    conn = sqlite3.connect(root / "database" / "odd" / "odd.sqlite")
    conn.create_collation("mine", lambda a, b: (a > b) - (a < b))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT COLLATE mine)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
    conn.commit()
    conn.close()
    (root / "dev.json").write_text(json.dumps([{"db_id": "odd", "question": "how many?",
                                                "query": "SELECT count(*) FROM t"}]))
    before = _hashes(root / "database")
    _one_line_error(capsys, ["testsuite", "build", "--data", str(root), "--out", str(tmp_path / "o"), "--workers", "0",
                             "--no-progress"], "cannot recreate")
    assert _hashes(root / "database") == before
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))  # nothing half-built is left


def test_bird_suite_is_scored_by_birds_rule(tmp_path, capsys):
    """A BIRD-layout dataset gets a suite whose manifest says BIRD's rule; `evaluate --test-suite --style bird` scores
    gold 100 % on it, and the scorer for Spider's rule refuses it."""
    from text2sql.errors import UserError
    from text2sql.eval.suite import SuiteScorer

    data, out = tmp_path / "bird", tmp_path / "bird_suite"
    assert main(["sample", "--layout", "bird", "--out", str(data), "--n-train", "4", "--n-dev", "12"]) == 0
    assert main(["testsuite", "build", "--data", str(data), "--out", str(out), "--workers", "0", "--no-progress",
                 "--per-db", "4", "--mutants", "4"]) == 0
    assert json.loads((out / "manifest.json").read_text())["style"] == "bird"
    pred = tmp_path / "pred.sql"
    pred.write_text("".join(line.split("\t")[0] + "\n" for line in (out / "dev_gold.sql").read_text().splitlines()))
    assert _evaluate(capsys, out / "dev_gold.sql", pred, out / "database", "--test-suite", "--style", "bird") == 1.0
    with pytest.raises(UserError, match="bird's rule"):
        SuiteScorer(out, style="spider", workers=0)


@pytest.mark.slow
def test_bench_held_out_measure_runs(built, tmp_path):
    """bench/test_suite.py's part (a) on the small suite: held-out mutants (another seed, none the distillation saw),
    a pool of fresh neighbours, and the shares killed by the original and by the suite."""
    import argparse
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import test_suite as bench

    data, out, _ = built
    suite = tmp_path / "suite"
    shutil.copytree(out, suite)
    args = argparse.Namespace(seed=3, heldout_seed=4, mutants=8, timeout=10.0, workers=0, pool=6, dbs="company")
    result = bench.held_out(data, suite, args)
    t = result["totals"]
    assert t["held_out_mutants"] > 0 and list(result["databases"]) == ["company"]
    assert t["original_kills"] <= t["suite_kills"] <= t["pool_tells_apart"] + t["suite_kills_outside_pool"]
    assert sorted(p.name for p in (suite / "database").iterdir()) == sorted(p.name for p in (out / "database").iterdir())


@pytest.mark.slow
def test_training_and_predict_score_on_the_suite(built, tmp_path):
    """`eval.test_suite=DIR`: each scored epoch logs val/test_suite_accuracy and marks each prediction row, as
    `evaluate --test-suite` scores the same files; `predict --evaluate` of the run scores on the suite too."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    data, suite, before = built
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
           "TEXT2SQL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "train.py", "dataset=spider", f"dataset.root={data}", "debug=smoke",
                           "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "eval.limit=8",
                           "eval.max_new_tokens=24", f"eval.test_suite={suite}", f"hydra.run.dir={run}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((run / "metrics.json").read_text())["history"][-1]
    assert 0.0 <= row["val/test_suite_accuracy"] <= row["val/execution_accuracy"]
    preds = run / "predictions"
    rows = [json.loads(line) for line in (preds / "epoch_0.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["correct"] or not r["test_suite"] for r in rows)  # the suite only takes away
    out = tmp_path / "suite.jsonl"
    assert main(["evaluate", "--gold", str(preds / "epoch_0_gold.sql"), "--pred", str(preds / "epoch_0_pred.sql"),
                 "--db", str(suite / "database"), "--test-suite", "--workers", "0", "--no-progress",
                 "--out", str(out)]) == 0
    assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == [r["test_suite"] for r in rows]
    proc = subprocess.run([sys.executable, "-m", "text2sql", "predict", "--run", str(run), "--limit", "4",
                           "--evaluate", "--out", str(tmp_path / "pred.sql")], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"test-suite accuracy on {suite / 'database'}" in proc.stdout
    assert _hashes(data / "database") == before  # neither run wrote the originals
