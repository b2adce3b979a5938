"""Decoding strategies under 2 CPU ranks (Lightning-launched, through train.py as a user types it) give the
predictions one process gives with the run's adapter: execution_guided (greedy, then beam candidates) under DDP,
self_consistency (sampled candidates) under DeepSpeed ZeRO-3, whose sharded weights make every rank run each
forward pass in lock-step (synced generation); `bench/decoding.py` runs on the DDP run, smoke-sized."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from test_ranks_slow import EVAL_N, SMOKE, launch, one_rank_predictions, predictions, run_dirs

pytestmark = pytest.mark.slow

DECODING = ["eval.decoding.num_beams=2", "eval.decoding.num_samples=3"]
JOBS = [["eval.decoding.strategy=execution_guided", "hardware=cpu"],
        ["eval.decoding.strategy=self_consistency", "hardware=deepspeed_zero2_cpu", "hardware.zero_stage=3"]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sweep(cache, tmp_path_factory):
    """Two 2-rank runs, one per executing strategy: DDP with beam candidates, ZeRO-3 with sampled ones."""
    base = tmp_path_factory.mktemp("decoding_ranks")
    dirs = []
    for k, job in enumerate(JOBS):
        proc = launch([sys.executable, "train.py", *SMOKE, *DECODING, *job, "logger=csv",
                       f"hydra.run.dir={base / str(k)}"], cache)
        dirs += run_dirs(proc)
    assert dirs == [base / "0", base / "1"]
    return dirs


@pytest.mark.parametrize("job,strategy", [(0, "execution_guided"), (1, "self_consistency")])
def test_two_ranks_decode_as_one(sweep, cache, monkeypatch, job, strategy):
    from text2sql.config.decoding import Decoding

    run = sweep[job]
    rows = predictions(run, 1)
    assert len(rows) == EVAL_N and {r["decoding"] for r in rows} == {strategy}
    assert all(r["candidates"] >= 1 for r in rows)
    decoding = Decoding(strategy=strategy, num_beams=2, num_samples=3)
    assert one_rank_predictions(run, cache, monkeypatch, decoding) == [r["prediction"] for r in rows]


def test_bench_decoding_prints_one_table_and_the_gain(sweep, cache):
    env = {"TEXT2SQL_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "bench/decoding.py", "--run", str(sweep[0]), "--limit", "3", "--json", ""],
                          cwd=REPO_ROOT, env={**__import__("os").environ, **env}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("gain execution_guided-greedy: ")
    table = {ln.split()[0] for ln in lines[2:-1]}
    assert table == {"greedy", "beam", "sample", "execution_guided", "self_consistency"}
