"""Sweeps end to end.

Fast tests run the `conf/sweep` and `conf/launcher` presets against a stub Hydra app (no training: the task
returns a made-up score), so the presets are checked without train.py. The `slow` tests run real tiny
trainings with `python train.py -m debug=smoke ...` (run them with `pytest -m slow tests/test_sweeps.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from text2sql.sweep import report

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STUB_APP = '''
import json, math, os
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    out = HydraConfig.get().runtime.output_dir
    if cfg.optim.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    # a made-up score, best near lr=1e-3, growing with r
    v = 1.0 - abs(math.log10(cfg.optim.lr) + 3) / 3 + cfg.peft.r / 1000
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"final": {"val/execution_accuracy": v, "train/loss": 1 - v},
                   "history": [{"epoch": 0, "val/execution_accuracy": v / 2, "train/loss": 2 - v},
                               {"epoch": 1, "val/execution_accuracy": v, "train/loss": 1 - v}],
                   "best": {"val/execution_accuracy": v, "epoch": 1},
                   "status": "ok", "error": None, "wall_time_s": 0.1}, f)
    return v

if __name__ == "__main__":
    main()
'''

STUB_TRAIN_YAML = """\
defaults:
  - _self_
  - sweep: null         # as in conf/train.yaml: `sweep=optuna`, not `+sweep=optuna`
peft: {r: 8, alpha: 16, dropout: 0.05}
optim: {lr: 2.0e-4}
"""


@pytest.fixture
def stub_app(tmp_path: Path) -> Path:
    """A Hydra app whose conf/ holds the repo's sweep and launcher presets and a stub primary config."""
    app = tmp_path / "app"
    (app / "conf").mkdir(parents=True)
    for group in ("sweep", "launcher"):
        shutil.copytree(REPO / "conf" / group, app / "conf" / group)
    (app / "conf" / "train.yaml").write_text(STUB_TRAIN_YAML)
    (app / "app.py").write_text(STUB_APP)
    return app


def run_stub(app: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "app.py", "-m", *overrides], cwd=app, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def job_metrics(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


def test_lora_grid_preset(stub_app: Path, tmp_path: Path):
    sweep_dir = tmp_path / "grid"
    run_stub(stub_app, "sweep=lora_grid", f"hydra.sweep.dir={sweep_dir}")
    jobs = report.find_job_dirs(sweep_dir)
    assert len(jobs) == 3 * 2 * 2
    combos = {tuple(sorted(report.read_overrides(j).items())) for j in jobs}
    assert len(combos) == 12
    rep = report.build_report(sweep_dir, png=False)
    assert rep.swept == ["peft.r", "peft.alpha", "optim.lr"]
    assert all(j.status == "ok" for j in rep.jobs)
    best = rep.jobs[0]
    assert best.overrides["peft.r"] == 64 and best.overrides["optim.lr"] == pytest.approx(2e-4)


def test_optuna_preset_best_trial_is_the_highest_metric(stub_app: Path, tmp_path: Path):
    sweep_dir = tmp_path / "optuna"
    run_stub(stub_app, "sweep=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}")
    metrics = job_metrics(sweep_dir)
    assert len(metrics) == 3
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_job = max(metrics, key=lambda k: metrics[k]["best"]["val/execution_accuracy"])
    assert results["best_value"] == pytest.approx(metrics[best_job]["best"]["val/execution_accuracy"])
    best_overrides = report.read_overrides(sweep_dir / best_job)
    for key, value in results["best_params"].items():
        assert best_overrides[key] == pytest.approx(value)
    # the search space of the preset
    assert set(results["best_params"]) == {"optim.lr", "peft.r", "peft.alpha", "peft.dropout"}
    rep = report.build_report(sweep_dir)
    assert rep.jobs[0].name == best_job
    assert "Optuna best trial" in (sweep_dir / "summary.md").read_text()


def test_optuna_preset_survives_a_raising_trial(stub_app: Path, tmp_path: Path):
    """max_failure_rate=1.0: a job that raises is a FAIL trial and the study goes on."""
    sweep_dir = tmp_path / "optuna_fail"
    run_stub(stub_app, "sweep=optuna", "hydra.sweeper.n_trials=3", "optim.lr=choice(-1.0,1e-3)",
             "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep_dir}")
    assert len(report.find_job_dirs(sweep_dir)) == 3
    metrics = job_metrics(sweep_dir)
    assert len(metrics) == 2  # with seed 0, one of the three trials samples lr=-1 and raises
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(m["best"]["val/execution_accuracy"] for m in metrics.values()))
    rep = report.build_report(sweep_dir, png=False)
    assert [j.status for j in rep.jobs] == ["ok", "ok", "failed"]


def test_grid_with_a_raising_job_runs_the_others(stub_app: Path, tmp_path: Path):
    """Basic sweeper: a job that raises does not stop its batch; Hydra exits 1 at the end; the report lists it."""
    sweep_dir = tmp_path / "fail"
    proc = run_stub(stub_app, "peft.r=4,8", "optim.lr=1e-3,-1", f"hydra.sweep.dir={sweep_dir}", check=False)
    assert proc.returncode == 1 and "optim.lr must be > 0" in proc.stderr
    assert len(job_metrics(sweep_dir)) == 2
    rep = report.build_report(sweep_dir, png=False)
    assert [j.status for j in rep.jobs] == ["ok", "ok", "failed", "failed"]
    assert all(j.overrides["optim.lr"] == -1 for j in rep.jobs[2:])
    assert "no metrics.json" in rep.jobs[2].error


def test_slurm_preset_composes_to_an_sbatch_script(stub_app: Path, tmp_path: Path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    submitit = pytest.importorskip("submitit")
    with initialize_config_dir(str(stub_app / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+launcher=slurm", "sweep=lora_grid", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1 and launcher["timeout_min"] > 0
    # build the sbatch script the way the launcher does (hydra_submitit_launcher.submitit_launcher.launch)
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k: v for k, v in launcher.items() if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    params["name"] = "train"
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here: pretend
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --time=240", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB"):
        assert line in script, script


# ------------------------------------------------------------------------------------- real train.py (slow)
