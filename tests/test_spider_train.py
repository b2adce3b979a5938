"""`python train.py dataset=spider ... model=tiny debug=smoke` on the real Spider copy beside the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_smoke_training_on_real_spider(spider_dir, tmp_path):
    """Two smoke epochs (the session's cache: the Spider-trained tiny model is built once for every Spider run), EX
    on a fixed-seed subset of 100 dev examples after the last one."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "dataset=spider", f"dataset.root={spider_dir}", "model=tiny", "debug=smoke",
         "trainer.limit_train_batches=2", "eval.limit=100", "eval.every_n_epochs=2", "eval.max_new_tokens=16",
         "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and len(metrics["history"]) == 2
    rows = [json.loads(x) for x in (run_dir / "predictions" / "epoch_1.jsonl").read_text().splitlines()]
    assert len(rows) == 100
    missing = [r for r in rows if r["db_id"] == "wta_1"]
    assert missing, "the fixed-seed subset should hold some wta_1 examples (their DB is not shipped)"
    assert all(r["status"] == "db_missing" and not r["correct"] for r in missing)
    assert all(r["status"] != "db_missing" for r in rows if r["db_id"] != "wta_1")
    assert metrics["final"]["val/status/db_missing"] == pytest.approx(len(missing) / 100)
    assert {r["hardness"] for r in rows} <= {"easy", "medium", "hard", "extra"}
