"""The EX callback also scores exact set match: val/exact_match and val/em_<level>, an exact_match field per
saved prediction; off with exact_match=False (no parsing at all). Scored through the public `score` with the
callback's own evaluator and matcher, and written by the run's record as training writes it."""

from __future__ import annotations

import json
import pytest

from text2sql.data.datamodule import EvalItem
from text2sql.data.sample import generate_sample
from text2sql.data.spider import SpiderDataset
from text2sql.eval.callback import ExecutionAccuracyCallback
from text2sql.eval.decoding import Prediction
from text2sql.eval.score import score
from text2sql.job.history import EpochLog
from text2sql.job.run_dir import RunDir


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("sample"), n_train=20, n_dev=12)


@pytest.mark.parametrize("exact_match", [True, False])
def test_callback_logs_exact_match(sample, tmp_path, exact_match):
    dev = json.loads((sample / "dev.json").read_text())
    items = [EvalItem(i, d["db_id"], d["question"], d["query"], []) for i, d in enumerate(dev)]
    # half right as written, a quarter right in result but not in form, a quarter wrong
    preds = []
    for i, d in enumerate(dev):
        q = d["query"]
        preds.append(q if i % 4 < 2 else q.replace("SELECT ", "SELECT DISTINCT ", 1) if i % 4 == 2 else "SELECT 1")
    cb = ExecutionAccuracyCallback(workers=0, exact_match=exact_match)
    dataset = SpiderDataset(sample)
    scored = score(items, [Prediction(p, "greedy") for p in preds], cb.evaluator(dataset), cb.matcher(dataset))
    cb.teardown(None, None, "fit")
    metrics = scored.metrics
    EpochLog(RunDir(tmp_path)).add_score(0, metrics, scored)
    saved = [json.loads(x) for x in (tmp_path / "predictions" / "epoch_0.jsonl").read_text().splitlines()]
    assert saved == scored.rows
    if not exact_match:
        assert not any("exact" in k or k.startswith("val/em_") for k in metrics)
        assert "exact_match" not in saved[0] and cb.matcher(dataset) is None and scored.matches is None
        return
    # DISTINCT is ignored by EM (official DISABLE_DISTINCT): 3 in 4 are exact; "SELECT 1" never is
    want = [i % 4 != 3 for i in range(len(dev))]
    assert [r["exact_match"] for r in saved] == want
    assert metrics["val/exact_match"] == pytest.approx(sum(want) / len(want))
    levels = {r["hardness"] for r in saved}
    assert {f"val/em_{lv}" for lv in levels} <= set(metrics)
    assert "val/execution_accuracy" in metrics


def test_evaluate_rescoring_an_epochs_files_gives_the_callbacks_scores(sample, tmp_path, capsys):
    """`text2sql evaluate` on the epoch's pred/gold files scores through the same `score`: the same verdict and
    exact match for every example."""
    from text2sql.cli import main

    dev = json.loads((sample / "dev.json").read_text())
    items = [EvalItem(i, d["db_id"], d["question"], d["query"], []) for i, d in enumerate(dev)]
    preds = [d["query"] if i % 3 else "SELECT 1" for i, d in enumerate(dev)]
    cb = ExecutionAccuracyCallback(workers=0)
    dataset = SpiderDataset(sample)
    scored = score(items, preds, cb.evaluator(dataset), cb.matcher(dataset))
    cb.teardown(None, None, "fit")
    run = RunDir(tmp_path / "run")
    EpochLog(run).add_score(0, scored.metrics, scored)
    _, pred_file, gold_file = run.prediction_files(0)
    out = tmp_path / "verdicts.jsonl"
    assert main(["evaluate", "--gold", str(gold_file), "--pred", str(pred_file), "--db", str(sample / "database"),
                 "--etype", "all", "--workers", "0", "--no-progress", "--out", str(out)]) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["correct"], r["status"], r["exact_match"]) for r in again] == \
        [(r["correct"], r["status"], r["exact_match"]) for r in scored.rows]
    assert f"{scored.execution_accuracy:.3f}" in capsys.readouterr().out


def test_report_ranks_a_sweep_by_exact_match(tmp_path, capsys):
    from text2sql.cli import main

    # job 0 has the better EX, job 1 the better EM: ranking by val/exact_match puts job 1 first
    for job, (ex, em) in enumerate([(0.9, 0.4), (0.7, 0.6)]):
        d = tmp_path / str(job)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={job + 1}e-3\n")
        history = [{"epoch": 0, "val/execution_accuracy": ex, "val/exact_match": em, "val/loss": 1.0}]
        (d / "metrics.json").write_text(json.dumps({"final": history[0], "history": history, "best": None,
                                                    "status": "ok", "error": None, "wall_time_s": 1.0}))
    assert main(["report", str(tmp_path), "--metric", "val/exact_match", "--no-plot"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    rows = [line.split("|")[1:-1] for line in summary.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert "best exact_match" in summary
    assert [(r[1].strip(), float(r[3])) for r in rows] == [("1", 0.6), ("0", 0.4)]
