"""CI-sized run of bench/train_throughput.py: both sides train one whole (tiny) epoch, so they must have seen the
same tokens, and their losses must be finite and close. Speed is reported by the benchmark, never asserted."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_benchmark_sides_train_on_the_same_tokens(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import train_throughput

    out = tmp_path / "thru.json"
    # 32 records, batch 16, 1 warm-up + 1 timed step = exactly one epoch on each side
    rc = train_throughput.main([
        "--workloads", "sample", "--sides", "ours,hf_grouped", "--once", "", "--repeats", "1",
        "--steps", "1", "--warmup", "1", "--train-limit", "32", "--json", str(out), "--loss-tolerance", "0.05",
        "--override", f"paths.cache_dir={tmp_path / 'cache'}", "--override", "dataset.n_train=64",
        "--override", "dataset.n_dev=8"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio a/b: \d+\.\d\d", lines[-1])
    report = json.loads(out.read_text())
    sides = report["workloads"]["sample"]["sides"]
    ours, hf = sides["ours"], sides["hf_grouped"]
    assert ours["steps"] == hf["steps"] == 2 and ours["train_records"] == hf["train_records"] == 32
    assert ours["tokens_total"] == hf["tokens_total"] > 0  # the same records, each seen once
    assert ours["targets_total"] == hf["targets_total"] > 0
    for side in (ours, hf):
        assert math.isfinite(side["loss_mean"]) and side["loss_mean"] > 0
        assert side["s_per_step"] > 0 and 0 <= side["padding_share"] < 1 and side["peak_rss_mb"] > 0
    assert abs(ours["loss_mean"] - hf["loss_mean"]) <= 0.05 * hf["loss_mean"]  # same work, same start
    assert report["machine"]["cores"] >= 1 and report["command"]
    assert float(lines[-1].split(":")[1]) == pytest.approx(report["ratio"], abs=0.006)


def test_bad_workload_is_one_line(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import train_throughput

    with pytest.raises(SystemExit) as err:
        train_throughput.main(["--workloads", "nope", "--json", ""])
    assert str(err.value).startswith("error: unknown workload/side ['nope']")
