"""`text2sql sync MULTIRUN_DIR`: which offline runs it uploads and the `wandb sync` command it runs.
(A real `wandb sync --dry-run` over a real offline run is in test_wandb_run.py.) Also: artifact metadata W&B accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from text2sql.cli import main
from text2sql.tracking.offline import offline_runs


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-11-25" / "14-03-12"
    for job, run_id in (("0", "aaa"), ("1", "bbb"), ("2", "ccc")):
        run = root / job / "wandb" / f"offline-run-20261125_140312-{run_id}"
        run.mkdir(parents=True)
        (run / f"run-{run_id}.wandb").write_bytes(b":W&B")
    (root / "1" / "wandb" / "offline-run-20261125_140312-bbb" / "run-bbb.wandb.synced").touch()
    (root / "notes" / "offline-run-x").mkdir(parents=True)  # not under a wandb/ dir: not a run
    return root


@pytest.fixture
def ran(monkeypatch) -> list[list[str]]:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    return calls


def test_syncs_every_unsynced_offline_run_of_a_multirun_dir(sweep, ran, capsys):
    assert [p.parent.parent.name for p in offline_runs(sweep)] == ["0", "1", "2"]
    assert main(["sync", str(sweep), "--entity", "team", "--project", "text2sql"]) == 0
    (cmd,) = ran
    assert cmd[1:6] == ["sync", "--entity", "team", "--project", "text2sql"]
    assert [Path(p).parent.parent.name for p in cmd[6:]] == ["0", "2"]  # job 1 is already synced
    out = capsys.readouterr().out
    assert "skip (already synced)" in out and out.count("sync: ") == 2


def test_dry_run_passes_dry_run_to_wandb_and_include_synced_takes_all(sweep, ran):
    assert main(["sync", str(sweep), "--dry-run", "--include-synced"]) == 0
    (cmd,) = ran
    assert {"--dry-run", "--include-synced"} <= set(cmd[2:4]) and len(cmd) == 4 + 3


def test_one_line_errors(tmp_path, capsys, ran):
    assert main(["sync", str(tmp_path / "nope")]) == 2
    assert main(["sync", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such dir" in err[0] and "no offline W&B runs" in err[1] and not ran


def test_a_diverged_metric_does_not_fail_the_artifact():
    """W&B rejects inf/nan in artifact metadata; the callback's metadata keeps them as strings instead."""
    import wandb

    from text2sql.tracking.artifacts import json_safe

    row = {"epoch": 0, "val/loss": float("inf"), "train/loss_epoch": float("nan"), "val/execution_accuracy": 0.5}
    with pytest.raises(ValueError):
        wandb.Artifact("predictions-x", type="dataset", metadata=row)
    artifact = wandb.Artifact("predictions-x", type="dataset", metadata=json_safe(row))
    assert artifact.metadata == {"epoch": 0, "val/loss": "inf", "train/loss_epoch": "nan",
                                 "val/execution_accuracy": 0.5}
