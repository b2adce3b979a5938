"""Fault drills through `python train.py`: SIGKILL after a checkpoint then resume, and W&B online without network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from text2sql.tracking.offline import read_run

pytestmark = pytest.mark.slow

# smoke-sized, and per-step logging so every step's loss and LR is in the W&B run
SMALL = ["debug=smoke", "trainer.max_epochs=3", "seed=7", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1",
         "eval.limit=8", "eval.max_new_tokens=24"]


def _env(tmp_path, **extra):
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TEXT2SQL_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1", **extra}


def _train(tmp_path, *args, env=None, check=True):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env or _env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _steps(run_dir):
    """{global_step: (train/loss, lr)} over every W&B offline run in the run dir."""
    loss, lr = {}, {}
    for run in sorted((run_dir / "wandb").glob("offline-run-*")):
        for row in read_run(run)["history"]:
            step = row.get("trainer/global_step")
            if "train/loss" in row:
                loss[step] = row["train/loss"]
            if "lr-AdamW" in row:
                lr[step] = row["lr-AdamW"]
    return {s: (loss[s], lr.get(s)) for s in loss}


def _exact(rows: list[dict]) -> list[dict]:
    """The rows without the throughput columns (perf/*: timings, which differ between any two runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")


class _Background:
    """A `train.py` run started at once, beside whatever runs next; `wait()` gives its run dir once it succeeded."""

    def __init__(self, cache, run_dir, *args):
        self.run_dir, self.log = run_dir, cache / f"{run_dir.name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "train.py", *args, f"hydra.run.dir={run_dir}"], cwd=REPO_ROOT,
                                         env=_env(cache), stdout=out, stderr=subprocess.STDOUT)

    def wait(self):
        assert self.proc.wait(timeout=600) == 0, self.log.read_text()[-3000:]
        return self.run_dir


@pytest.fixture(scope="module")
def whole(cache):
    """The uninterrupted run the drills compare with: it trains beside the first drill (one core each), which waits
    for it only where it compares."""
    run = _Background(cache, cache / "whole", *SMALL)
    yield run
    if run.proc.poll() is None:  # a drill failed before it waited
        run.proc.kill()
        run.proc.wait()


def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(cache, whole):
    killed = cache / "killed"

    # the same run, SIGKILLed (with its W&B and evaluator processes) as soon as its first checkpoint exists
    proc = subprocess.Popen([sys.executable, "train.py", *SMALL, f"hydra.run.dir={killed}"], cwd=REPO_ROOT,
                            env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "adapter").exists()  # it really died before the end

    resumed = _train(cache, f"ckpt_path={killed}")  # no overrides repeated: the run dir has them
    assert f"run dir: {killed}" in resumed.stdout  # continued in its own dir, not a new one
    assert "exists and is not empty" not in resumed.stdout + resumed.stderr  # Lightning's warning: expected here

    whole = whole.wait()
    a, b = json.loads((whole / "metrics.json").read_text()), json.loads((killed / "metrics.json").read_text())
    assert [r["epoch"] for r in b["history"]] == [0, 1, 2] and b["status"] == "ok"
    assert _exact(b["history"]) == _exact(a["history"]) and _exact([b["final"]]) == _exact([a["final"]])
    assert b["best"] == a["best"]
    steps_a, steps_b = _steps(whole), _steps(killed)
    assert len(steps_a) == 12 and steps_b  # the steps after the resume are all there
    for step, (loss, lr) in steps_b.items():
        assert steps_a[step] == (loss, lr), f"step {step}"
    assert set(range(min(steps_b), 12)) <= set(steps_b)

    # one W&B run: both processes logged under the id kept in the run dir
    run_id = (killed / "wandb" / "run_id").read_text().strip()
    runs = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {run_id}
    assert sorted(p.name for p in (killed / "predictions").glob("epoch_*.jsonl")) == [
        "epoch_0.jsonl", "epoch_1.jsonl", "epoch_2.jsonl"]

    again = _train(cache, f"ckpt_path={killed}")  # a finished run says so and trains nothing
    assert "the run is finished" in again.stdout + again.stderr
    assert _exact(json.loads((killed / "metrics.json").read_text())["history"]) == _exact(a["history"])


@pytest.mark.parametrize("signum, status, code", [(signal.SIGINT, "interrupted", 130),
                                                  (signal.SIGTERM, "preempted", 143)])
def test_sigint_and_sigterm_checkpoint_the_step_and_the_resume_is_exact(cache, whole, signum, status, code):
    stopped = cache / status
    # stdout is a pipe, so progress comes as plain lines: the signal goes in the middle of epoch 1 (step 6 of 12),
    # to the whole process group as a terminal's Ctrl-C or SLURM's preemption does
    proc = subprocess.Popen([sys.executable, "train.py", *SMALL, "progress.every_s=0.001", f"hydra.run.dir={stopped}"],
                            cwd=REPO_ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1 of 3 batch 1/4" in line:
            os.killpg(proc.pid, signum)
            break
    lines += proc.stdout.readlines()
    assert proc.wait(timeout=300) == code, "".join(lines)[-3000:]
    output = "".join(lines)
    record = json.loads((stopped / "metrics.json").read_text())
    assert record["status"] == status and 5 <= record["step"] <= 7, output[-3000:]  # the step after the signal
    assert [r["epoch"] for r in record["history"]] == [0]
    assert f"{status} at step {record['step']}; resume from a checkpoint at this step: " \
           f"python train.py ckpt_path={stopped}" in output
    assert "Traceback" not in output and "Detected KeyboardInterrupt" not in output
    assert torch_load_step(stopped / "checkpoints" / "last.ckpt") == record["step"]  # mid-epoch, at that step
    assert "epoch 1 of 3 batch 1/4 step 5/12 loss " in (stopped / "train.log").read_text()  # progress in the log too

    resumed = _train(cache, f"ckpt_path={stopped}")
    ex_lines = [ln for ln in resumed.stdout.splitlines() if "execution accuracy" in ln]
    assert ex_lines[0].startswith("[") and "epoch 1: execution accuracy" in ex_lines[0]
    assert "(first)" not in ex_lines[0], ex_lines  # the change from epoch 0, before the stop
    whole = whole.wait()
    a, b = json.loads((whole / "metrics.json").read_text()), json.loads((stopped / "metrics.json").read_text())
    assert b["status"] == "ok" and "step" not in b
    assert all(r["perf/tokens_per_s"] > 0 and r["perf/s_per_step"] > 0 and r["perf/peak_memory_gb"] > 0
               for r in a["history"])  # per-epoch throughput in every row
    assert _exact(b["history"]) == _exact(a["history"]) and b["best"] == a["best"]
    steps_a, steps_b = _steps(whole), _steps(stopped)
    assert set(steps_b) == set(range(12))  # every step, once: none replayed, none skipped
    for step, (loss, lr) in steps_b.items():
        assert steps_a[step] == (loss, lr), f"step {step}"


def torch_load_step(path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_wandb_online_without_network_warns_once_and_logs_offline(cache):
    run_dir = cache / "no_network"
    env = _env(cache, WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9",  # loopback, nothing listens
               WANDB_API_KEY="x" * 40, WANDB_INIT_TIMEOUT="3")
    proc = _train(cache, "debug=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "eval.limit=4",
                  "eval.max_new_tokens=16", f"hydra.run.dir={run_dir}", env=env)
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "W&B is unreachable" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "Traceback" not in output
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert offline.name.endswith((run_dir / "wandb" / "run_id").read_text().strip())
    assert any("train/loss" in row for row in read_run(offline)["history"])  # training was logged, offline
