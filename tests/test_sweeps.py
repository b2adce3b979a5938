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
from text2sql.sweep.jobs import find_job_dirs, read_overrides

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
    jobs = find_job_dirs(sweep_dir)
    assert len(jobs) == 3 * 2 * 2
    combos = {tuple(sorted(read_overrides(j).items())) for j in jobs}
    assert len(combos) == 12
    rep = report.build_report(sweep_dir, png=False)
    assert rep.swept == ["peft.r", "peft.alpha", "optim.lr"]
    assert all(j.status == "ok" for j in rep.jobs)
    best = rep.jobs[0]
    assert best.overrides["peft.r"] == 64 and best.overrides["optim.lr"] == pytest.approx(1e-3)


def test_optuna_preset_best_trial_is_the_highest_metric(stub_app: Path, tmp_path: Path):
    sweep_dir = tmp_path / "optuna"
    run_stub(stub_app, "sweep=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}")
    metrics = job_metrics(sweep_dir)
    assert len(metrics) == 3
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best_job = max(metrics, key=lambda k: metrics[k]["best"]["val/execution_accuracy"])
    assert results["best_value"] == pytest.approx(metrics[best_job]["best"]["val/execution_accuracy"])
    best_overrides = read_overrides(sweep_dir / best_job)
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
    assert len(find_job_dirs(sweep_dir)) == 3
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


class Sweep:
    """`python train.py -m ...` started in the repo at once (its .cache/text2sql: the tiny model and sample are
    built once), its output in files; `result()` waits for it."""

    def __init__(self, root: Path, name: str, *overrides: str):
        self.dir, self.out, self.err = root / name, root / f"{name}.out", root / f"{name}.err"
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "train.py", "-m", *overrides, f"hydra.sweep.dir={self.dir}"],
                                         cwd=REPO, env=env, stdout=out, stderr=err)

    def result(self, timeout: int = 1200) -> subprocess.CompletedProcess:
        self.proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.out.read_text(),
                                           self.err.read_text())


# smoke-sized jobs on fewer batches and dev examples: what the asserts read (a status, an EX per epoch, the
# report's ranking and the W&B run of each job) needs no more
SMALL = ("debug=smoke", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.train_limit=64",
         "data.val_loss_limit=8", "eval.limit=8", "eval.max_new_tokens=16")


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def wandb_runs(job_dir: Path) -> list[Path]:
    """The W&B run dirs a job wrote: <job>/wandb/offline-run-<time>-<id> (or run-... when online)."""
    return sorted(p for p in (job_dir / "wandb").glob("*run-*") if p.is_dir())


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Sweep]:
    """The three real sweeps of this module, started side by side (one torch thread each, 2 cores)."""
    root = tmp_path_factory.mktemp("sweeps")
    started = {
        "grid": Sweep(root, "grid", *SMALL, "peft.r=4,8", "optim.lr=1e-3,2e-3"),
        # a negative learning rate fails the range check at start; the failing job runs first, the good one after it
        "fail": Sweep(root, "fail", *SMALL, "trainer.max_epochs=1", "optim.lr=-1,1e-3"),
        "optuna": Sweep(root, "optuna", "sweep=optuna", *SMALL, "trainer.max_epochs=1", "hydra.sweeper.n_trials=3"),
    }
    yield started
    for sweep in started.values():  # a test failed before it waited
        if sweep.proc.poll() is None:
            sweep.proc.kill()
            sweep.proc.wait()


@pytest.fixture(scope="module")
def smoke_grid(sweeps) -> Path:
    assert_ok(sweeps["grid"].result())
    return sweeps["grid"].dir


@pytest.mark.slow
def test_smoke_grid_2x2_and_report(smoke_grid: Path):
    from text2sql.cli import main

    metrics = job_metrics(smoke_grid)
    assert sorted(metrics) == ["0", "1", "2", "3"]
    assert all(m["status"] == "ok" and m["history"] for m in metrics.values()), metrics
    assert main(["report", str(smoke_grid)]) == 0

    table = [ln for ln in (smoke_grid / "summary.md").read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert len(rows) == 4 and [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert header[2:4] == ["peft.r", "optim.lr"]
    best = [float(r[header.index("best EX")]) for r in rows]
    assert best == sorted(best, reverse=True)
    expected = sorted((max(h["val/execution_accuracy"] for h in m["history"]) for m in metrics.values()),
                      reverse=True)
    assert best == pytest.approx(expected, abs=1e-4)

    import csv

    with (smoke_grid / "summary.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 4 and {r["status"] for r in csv_rows} == {"ok"}
    assert {(int(r["peft.r"]), float(r["optim.lr"])) for r in csv_rows} == {(4, 1e-3), (4, 2e-3), (8, 1e-3), (8, 2e-3)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    png = smoke_grid / "summary.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and mpimg.imread(png).ndim == 3


@pytest.mark.slow
def test_each_job_is_its_own_wandb_run(smoke_grid: Path):
    """Hydra multirun + WandbLogger pitfall: without wandb.finish() per job, job 1 logs into job 0's run."""
    runs = {job.name: wandb_runs(job) for job in find_job_dirs(smoke_grid)}
    assert all(len(r) == 1 for r in runs.values()), runs
    run_ids = {name: r[0].name.rsplit("-", 1)[-1] for name, r in runs.items()}
    assert len(set(run_ids.values())) == 4, run_ids
    from text2sql.tracking.offline import _records, read_run, run_file
    from wandb.proto import wandb_internal_pb2 as pb

    groups = set()
    for name, (run,) in runs.items():
        job = smoke_grid / name
        overrides = read_overrides(job)
        logged = read_run(run)
        # the run holds this job's config (swept keys at top level) and exactly this job's EX per epoch
        assert float(logged["config"]["optim.lr"]) == pytest.approx(overrides["optim.lr"])
        assert int(logged["config"]["peft.r"]) == overrides["peft.r"]
        metrics = json.loads((job / "metrics.json").read_text())
        ex_rows = [r["val/execution_accuracy"] for r in logged["history"] if "val/execution_accuracy" in r]
        assert ex_rows == pytest.approx([h["val/execution_accuracy"] for h in metrics["history"]])
        for raw in _records(run_file(run).read_bytes()):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "run":
                assert record.run.run_id == run_ids[name]
                assert f"peft.r={overrides['peft.r']}" in record.run.display_name  # run name = the overrides
                groups.add(record.run.run_group)
                break
    assert len(groups) == 1 and smoke_grid.name in groups.pop()  # one W&B group per sweep dir


@pytest.mark.slow
def test_failing_job_is_recorded_and_the_sweep_goes_on(sweeps):
    from text2sql.cli import main

    sweep_dir = sweeps["fail"].dir  # optim.lr=-1,1e-3: the failing job runs first, the good one must still run after it
    assert_ok(sweeps["fail"].result())  # train.py returns the worst value for a failed job in a multirun: Hydra exits 0
    metrics = job_metrics(sweep_dir)
    assert metrics["0"]["status"] == "failed" and "optim.lr" in metrics["0"]["error"]
    assert metrics["1"]["status"] == "ok" and metrics["1"]["history"]
    assert main(["report", str(sweep_dir)]) == 0
    md = (sweep_dir / "summary.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert len(rows) == 2 and "| ok |" in rows[0]
    assert "failed: " in rows[1] and "optim.lr" in rows[1]


@pytest.mark.slow
def test_optuna_smoke_best_trial_is_the_highest_returned_metric(sweeps):
    sweep_dir = sweeps["optuna"].dir
    assert_ok(sweeps["optuna"].result())
    metrics = job_metrics(sweep_dir)
    assert len(metrics) == 3 and all(m["status"] == "ok" for m in metrics.values())
    # train.py returns metrics.json's best value of the optimized metric
    returned = {job: m["best"]["val/execution_accuracy"] for job, m in metrics.items()}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(returned.values()))
    # the best params are those of a job that returned the highest value (ties: any of them)
    best_jobs = [j for j, v in returned.items() if v == pytest.approx(max(returned.values()))]
    matches = [j for j in best_jobs
               if all(read_overrides(sweep_dir / j)[k] == pytest.approx(v)
                      for k, v in results["best_params"].items())]
    assert matches, (results, returned)
