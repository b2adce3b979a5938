"""CI-sized run of bench/train_throughput.py: both sides train one whole (tiny) epoch, so they must have seen the
same tokens, and their losses must be finite and close. Speed is reported by the benchmark, never asserted."""

from __future__ import annotations

import json
import math
import re
import socket
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_benchmark_sides_train_on_the_same_tokens(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # What an earlier in-process DDP test leaves in os.environ (Lightning sets these and never unsets them), with
    # the port still taken: each side must stay a single process (CI once failed here with EADDRINUSE).
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(taken.getsockname()[1]), "WORLD_SIZE": "1",
                       "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
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
    for key in ("loss_mean", "held_out_loss"):  # same work from the same start: close losses
        assert math.isfinite(ours[key]) and abs(ours[key] - hf[key]) <= 0.05 * hf[key], key
    assert report["machine"]["cores"] >= 1 and report["command"]
    assert float(lines[-1].split(":")[1]) == pytest.approx(report["ratio"], abs=0.006)


def test_bad_workload_is_one_line(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import train_throughput

    with pytest.raises(SystemExit) as err:
        train_throughput.main(["--workloads", "nope", "--json", ""])
    assert str(err.value).startswith("error: unknown workload/side ['nope']")


def test_make_readme_renders_every_result(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import make_readme

    results = tmp_path / "results"
    results.mkdir()
    machine = {"cores": 2, "cpu": "Test CPU"}
    (results / "bench_predict.json").write_text(json.dumps({
        "benchmark": "bench_predict", "date": "2026-01-02", "machine": machine, "command": "python bench/bench_predict.py",
        "summary": {"compares": "batched vs one at a time", "ours": "1.00 s", "baseline": "9.00 s", "ratio": 9.0}}))
    side = {"train_records": 10, "s_per_step": 0.5, "tokens_per_s": 100.0, "target_tokens_per_s": 20.0,
            "padding_share": 0.1, "peak_rss_mb": 500.0, "loss_mean": 5.0, "runs_s_per_step": [0.5]}
    (results / "train_throughput.json").write_text(json.dumps({
        "benchmark": "train_throughput", "date": "2026-01-03", "machine": machine, "command": "python bench/train_throughput.py",
        "batch_size": 16, "steps": 20, "warmup": 3, "threads": 1, "repeats": 2, "ratio": 1.25, "ratio_workload": "spider",
        "workloads": {"spider": {"sides": {"ours": side, "hf_grouped": side}, "ratios": {"hf_grouped": 1.25},
                                 "loss_gap": 0.01}},
        "summary": {"compares": "training tokens/s", "ours": "125 tokens/s", "baseline": "100 tokens/s", "ratio": 1.25}}))
    out = tmp_path / "README.md"
    assert make_readme.main(["--results", str(results), "--out", str(out), "--notes", str(tmp_path / "none")]) == 0
    text = out.read_text()
    assert "| `python bench/bench_predict.py` | batched vs one at a time | 1.00 s | 9.00 s | 9.00 |" in text
    assert "| `python bench/train_throughput.py` | training tokens/s | 125 tokens/s | 100 tokens/s | 1.25 |" in text
    assert "2 cores, Test CPU | 2026-01-03 |" in text and "`ratio a/b: 1.25`" in text
    assert text.index("train_throughput.py` |") < text.index("bench_predict.py` |")  # fixed order
