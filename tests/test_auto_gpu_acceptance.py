"""bench/gpu_acceptance.sh without a GPU: prints its plan (every check, through train.py) and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the script would run")
def test_without_a_gpu_it_prints_the_plan_and_exits_0(tmp_path):
    out = tmp_path / "acc"
    proc = subprocess.run(["bash", "bench/gpu_acceptance.sh", "--out", str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpu_acceptance: no CUDA GPU here") and "nothing run" in lines[0]
    for check in ("lora", "qlora4", "qlora8", "zero2", "zero3", "ex64", "resume", "merge"):
        assert any(line.strip().startswith(f"[{check}]") for line in lines), check
    text = proc.stdout
    assert "train.py model=codellama7b" in text and "hardware=deepspeed_zero3" in text and "eval.limit=64" in text
    assert "ckpt_path=" in text and "text2sql merge" in text
    assert not out.exists()  # nothing built, nothing measured
