"""`text2sql predict`: same config as training, same generation as the callback, DB-GPT-Hub's pred.sql."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    env = {**os.environ, "WANDB_MODE": "offline", "TEXT2SQL_CACHE": str(tmp / "cache")}
    run_dir = tmp / "run"
    proc = subprocess.run([sys.executable, "train.py", "debug=smoke", "logger=none", f"hydra.run.dir={run_dir}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir, env


def test_predict_from_run_dir_matches_the_callbacks_predictions(trained_run, tmp_path, monkeypatch):
    run_dir, env = trained_run
    monkeypatch.setenv("TEXT2SQL_CACHE", env["TEXT2SQL_CACHE"])
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "pred.sql"
    assert main(["predict", "--run", str(run_dir), "--out", str(out), "--no-progress", "--limit", "40",
                 "eval.max_new_tokens=48"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 40 and all("\n" not in line for line in lines)
    # the callback scored the same model on a dev subset at the last epoch: same prompts, same outputs
    import json

    rows = [json.loads(x) for x in (run_dir / "predictions" / "epoch_1.jsonl").read_text().splitlines()]
    # predict loads the run's final weights (its adapter, or last.ckpt): those of the last epoch
    by_index = {r["index"]: r["prediction"] for r in rows}
    common = [i for i in by_index if i < 40]
    assert common, "the smoke subset and the first 40 dev examples should overlap"
    assert [lines[i] for i in common] == [by_index[i] for i in common]


def test_predict_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "--out", str(tmp_path / "p.sql")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run dir" in err[0]
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["predict", "model=nope"]) == 2
    assert "model/nope" in capsys.readouterr().err
