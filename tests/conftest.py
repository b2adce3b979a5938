"""Shared fixtures. Real Spider is read at run time (never copied into the repo): from $SPIDER_DIR when it is
set, else from ../shared/spider beside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPIDER = REPO_ROOT.parent / "shared" / "spider"


def find_spider() -> tuple[Path | None, list[Path]]:
    """The first Spider copy among $SPIDER_DIR and ../shared/spider (a dir with dev.json), and where we looked."""
    candidates = [Path(os.environ["SPIDER_DIR"]).expanduser()] if os.environ.get("SPIDER_DIR") else []
    candidates.append(SHARED_SPIDER)
    found = next((c for c in candidates if (c / "dev.json").is_file()), None)
    return found, candidates


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    """The real Spider copy; tests that need it skip with a reason (where we looked) when it is absent."""
    found, looked = find_spider()
    if found is None:
        pytest.skip("real Spider not found (looked at " + ", ".join(map(str, looked))
                    + "; set SPIDER_DIR or put it at ../shared/spider beside the repo)")
    return found


@pytest.fixture(scope="session")
def _smoke(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One `python train.py debug=smoke peft.r=4` run, shared by every test that reads a trained smoke run (what it
    printed, its metrics and W&B files, predict, ask, merge): started in its own dir with the default, relative
    cache (.cache/text2sql there, built cold) and the default logger (W&B offline, not silenced): what a user gets
    from `python train.py debug=smoke` in a fresh clone. The adapter size is not the default (r=4), so a reader that
    ignores the run's config fails."""
    tmp = tmp_path_factory.mktemp("smoke_run")
    start = tmp / "start"
    start.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TEXT2SQL_CACHE", "WANDB_SILENT")}
    env.update(WANDB_MODE="offline", PYTHONPATH=str(REPO_ROOT))
    run_dir = tmp / "run"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "debug=smoke", "peft.r=4",
                           f"hydra.run.dir={run_dir}"], cwd=start, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir, start, proc


@pytest.fixture(scope="session")
def smoke_run(_smoke) -> tuple[Path, Path]:
    """(run dir, start dir) of the shared smoke run."""
    return _smoke[0], _smoke[1]


@pytest.fixture(scope="session")
def smoke_output(_smoke) -> subprocess.CompletedProcess:
    """What the shared smoke run printed (stdout and stderr)."""
    return _smoke[2]


@pytest.fixture(scope="session")
def tiny_default(tmp_path_factory):
    """tests/tiny.py's default setup (dataset, model_cfg, model_path, tokenizer), built once for the modules that
    train or load it in-process and never write to it."""
    from tiny import tiny_setup

    return tiny_setup(tmp_path_factory.mktemp("tiny_default"))


# What an in-process DDP/DeepSpeed fit leaves behind: Lightning and DeepSpeed write the launch variables into
# os.environ. A later test's `train.py` subprocess inherits them and believes a launcher started it (CI saw
# EADDRINUSE and 2-rank runs that never printed their run dir), so every test gets them back as they were.
@pytest.fixture(autouse=True)
def no_rendezvous_leak():
    from text2sql.job.ranks import LAUNCH_VARS, restore_env

    saved = {key: os.environ.get(key) for key in LAUNCH_VARS}
    yield
    # (the process group itself stays: DeepSpeed caches it in module globals, and later in-process fits reuse it)
    restore_env(saved)
