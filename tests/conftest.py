"""Shared fixtures. Real Spider is read at run time (never copied into the repo): from $SPIDER_DIR when it is
set, else from ../shared/spider beside the repo."""

from __future__ import annotations

import os
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
