"""The EX callback also scores exact set match: val/exact_match and val/em_<level>, an exact_match field per
saved prediction; off with exact_match=False (no parsing at all)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from text2sql.data.datamodule import EvalItem
from text2sql.data.sample import generate_sample
from text2sql.data.spider import SpiderDataset
from text2sql.eval.callback import ExecutionAccuracyCallback
from text2sql.eval.decoding import Prediction


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("sample"), n_train=20, n_dev=12)


def _trainer(root):
    return SimpleNamespace(datamodule=SimpleNamespace(dataset=SpiderDataset(root)), loggers=[], current_epoch=0,
                           global_step=0)


@pytest.mark.parametrize("exact_match", [True, False])
def test_callback_logs_exact_match(sample, tmp_path, exact_match):
    dev = json.loads((sample / "dev.json").read_text())
    items = [EvalItem(i, d["db_id"], d["question"], d["query"], []) for i, d in enumerate(dev)]
    # half right as written, a quarter right in result but not in form, a quarter wrong
    preds = []
    for i, d in enumerate(dev):
        q = d["query"]
        preds.append(q if i % 4 < 2 else q.replace("SELECT ", "SELECT DISTINCT ", 1) if i % 4 == 2 else "SELECT 1")
    cb = ExecutionAccuracyCallback(output_dir=str(tmp_path), workers=0, exact_match=exact_match)
    cb._items = items
    metrics = cb._score(_trainer(sample), [Prediction(p, "greedy") for p in preds], epoch=0)
    cb.teardown(None, None, "fit")
    saved = [json.loads(x) for x in (tmp_path / "predictions" / "epoch_0.jsonl").read_text().splitlines()]
    if not exact_match:
        assert not any("exact" in k or k.startswith("val/em_") for k in metrics)
        assert "exact_match" not in saved[0] and cb._matcher is None
        return
    # DISTINCT is ignored by EM (official DISABLE_DISTINCT): 3 in 4 are exact; "SELECT 1" never is
    want = [i % 4 != 3 for i in range(len(dev))]
    assert [r["exact_match"] for r in saved] == want
    assert metrics["val/exact_match"] == pytest.approx(sum(want) / len(want))
    levels = {r["hardness"] for r in saved}
    assert {f"val/em_{lv}" for lv in levels} <= set(metrics)
    assert "val/execution_accuracy" in metrics


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
