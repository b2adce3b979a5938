"""bench/gpu_scale.py's whole plan at toy scale on the CPU: every side, the probe, the EX cost and every lever run
through the same code a GPU session runs, and the JSON they write is checked -- so no GPU minute goes to a broken
plan. (Speed figures on the CPU prove nothing and are not asserted.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the script would run")
def test_without_a_gpu_or_toy_the_one_command_prints_the_plan_and_measures_nothing(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(["bash", "bench/gpu_scale.sh", "--json", str(tmp_path / "r.json"), "--levers", "compile,zero2"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("gpu_scale: no CUDA GPU here: nothing measured") and "--toy" in line
    assert "codellama13b" in line and "compile, zero2" in line and not (tmp_path / "r.json").exists()


def test_an_unknown_lever_is_one_line():
    import gpu_scale

    with pytest.raises(SystemExit):
        gpu_scale.parse(["--levers", "warp_drive"])


def test_bench_readme_shows_the_gpu_row_until_a_result_exists(tmp_path):
    import make_readme

    (tmp_path / "results").mkdir()
    text = make_readme.render(make_readme.load(tmp_path / "results"))
    assert "| `bash bench/gpu_scale.sh` |" in text and "not run yet: no GPU was available" in text


@pytest.mark.slow
def test_the_whole_plan_runs_at_toy_scale_and_writes_its_json(tmp_path):
    import gpu_scale

    out = tmp_path / "gpu_scale.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "bench/gpu_scale.py", "--toy", "--presets", "codellama13b,no_such_preset",
                           "--json", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio ours/theirs: ")

    r = json.loads(out.read_text())
    assert r["benchmark"] == "gpu_scale" and r["toy"] is True and r["gpu"]
    assert last == f"ratio ours/theirs: {r['ratio_codellama13b']:.2f}" and r["summary"]["ratio"] == r["ratio_codellama13b"]
    assert any(s.startswith("no_such_preset") for s in r["skipped"])  # a missing preset is skipped, not fatal
    entry = r["presets"]["codellama13b"]
    assert entry["arch"]["num_hidden_layers"] == 2 and entry["trainable_params"] > 0
    mb = entry["largest_micro_batch"]
    assert mb == 16 and [p["micro_batch"] for p in entry["probe"]] == [16]  # no memory limit on the CPU
    for name, micro in (("theirs", 1), ("ours_mb1", 1), (f"ours_mb{mb}", mb)):
        side = entry["sides"][name]
        assert "error" not in side, side
        assert side["micro_batch"] == micro and side["micro_batch"] * side["accumulate"] == 16
        assert side["timed_steps"] == r["steps"] and side["tokens_per_s"] > 0 and side["projected_8_epochs_hours"] > 0
    assert entry["sides"]["theirs"]["padding_share"] == 0  # one example per micro-batch
    assert any("scaled_dot_product" in op for op in entry["sides"]["ours_mb1"]["attention_ops"])
    assert entry["ratio_ours_theirs"] == r["ratio_codellama13b"] and "ratio_codellama13b_mb1" in r
    ex = entry["ex_cost"]
    assert ex["prompts"] == 8 and ex["dev_examples"] == r["data"]["dev_examples"] and ex["seconds"] > 0
    assert ex["max_new_tokens"] == r["data"]["gold_sql_tokens_p95"] and 0 < ex["share_of_epoch"] < 1
    for lever in gpu_scale.LEVERS:  # each measured against ours_mbN (or skipped for a missing package)
        row = entry["levers"][lever]
        assert "skipped" in row or ("error" not in row and isinstance(row["kept"], bool)
                                    and r[f"ratio_lever_{lever}"] == row["vs_ours"]), (lever, row)
    assert "tokens_per_s" in entry["levers"]["packed"] and "tokens_per_s" in entry["levers"]["full_head"]

    import make_readme  # the result renders into bench/README.md: summary row and the details tables

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "gpu_scale.json").write_text(out.read_text())
    text = make_readme.render(make_readme.load(tmp_path / "results"))
    assert "## Full-size speed on one GPU" in text and "| codellama13b | theirs | 1 x 16 |" in text
    assert "| codellama13b | ours_mb16 | 16 x 1 |" in text and "| packed |" in text and "EX cost per epoch" in text
    assert "not run yet" not in text.split("## Full-size")[0].split("gpu_scale")[1][:300]


def test_our_side_keeps_the_model_on_the_device_after_fit():
    """Lightning's teardown copies the model to the CPU (26 GB for 13B after every entry, and the EX generation
    that follows would run there): the bench's strategy leaves it where it is."""
    import torch
    from lightning.pytorch.accelerators import CPUAccelerator

    import gpu_scale_sides

    moved = []

    class Module(torch.nn.Module):
        def cpu(self):
            moved.append(True)
            return self

    strategy = gpu_scale_sides.stay_on_device()
    strategy.accelerator, module = CPUAccelerator(), Module()
    strategy._lightning_module = module
    strategy.teardown()
    assert not moved and strategy.lightning_module is module
