"""`python train.py debug=smoke` end to end: a real run whose metric can be read back from W&B's files."""

from __future__ import annotations

import json

import pytest

from text2sql.tracking.offline import read_run


def test_smoke_run_leaves_metrics_and_a_wandb_run_with_the_same_value(smoke_run, smoke_output):
    """conftest's shared smoke run (`python train.py debug=smoke`, W&B offline)."""
    run_dir, proc = smoke_run[0], smoke_output
    assert f"run dir: {run_dir}" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]
    for row in metrics["history"]:
        assert 0.0 <= row["val/execution_accuracy"] <= 1.0 and row["train/loss"] > 0
    final = metrics["final"]["val/execution_accuracy"]

    # the W&B offline run, read back from its files after the process ended
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    logged = read_run(wandb_run)
    # summarised as a max metric: the run summary holds the best epoch's value
    assert logged["summary"]["val/execution_accuracy"] == {"max": pytest.approx(metrics["best"]["val/execution_accuracy"])}
    ex_rows = [r["val/execution_accuracy"] for r in logged["history"] if "val/execution_accuracy" in r]
    assert ex_rows == pytest.approx([row["val/execution_accuracy"] for row in metrics["history"]])
    assert ex_rows[-1] == pytest.approx(final)
    assert logged["config"]["model"]["name"] == "tiny-llama"  # the resolved config is logged too

    # predictions and verdicts of each epoch are saved in the run dir
    rows = [json.loads(line) for line in (run_dir / "predictions" / "epoch_1.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {"gold", "prediction", "status", "hardness", "correct"} <= set(rows[0])
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(final)
