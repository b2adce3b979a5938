"""Shared fixtures. Real Spider lives in ../shared/spider at run time and is never copied into the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SPIDER = REPO_ROOT.parent / "shared" / "spider"


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    """The real Spider copy beside the project; tests that need it skip with a reason when it is absent."""
    if not (SHARED_SPIDER / "dev.json").is_file():
        pytest.skip(f"real Spider not found at {SHARED_SPIDER} (expected ../shared/spider beside the repo)")
    return SHARED_SPIDER
