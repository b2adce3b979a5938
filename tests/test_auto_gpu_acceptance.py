"""bench/gpu_acceptance.sh without a GPU: prints its plan (every check, through train.py) and exits 0."""

from __future__ import annotations

import json
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
    for check in ("lora", "qlora4", "qlora8", "zero2", "zero3", "ex64", "resume", "merge", "predict", "qwen2", "llama3",
                  "mistral"):
        assert any(line.strip().startswith(f"[{check}]") for line in lines), check
    text = proc.stdout
    assert "train.py model=codellama7b" in text and "hardware=deepspeed_zero3" in text and "eval.limit=64" in text
    assert "ckpt_path=" in text and "text2sql merge" in text and "text2sql predict --run" in text
    for preset in ("qwen25_coder_7b", "llama31_8b", "mistral_7b"):  # one random few-layer model per chat family
        assert f"model={preset} model.path={out}/random-{preset}-2layers" in text
    assert not out.exists()  # nothing built, nothing measured


@pytest.mark.slow
def test_the_lora_resume_merge_predict_chain_runs_through_the_same_commands_on_the_cpu(tmp_path, monkeypatch):
    """The plan's own commands (hardware=cpu appended) and its own verdicts, on a 1-layer random model built by the
    script's builder: what a GPU session runs, minus CUDA, so a broken plan is caught before device time is spent.
    (The H200 run of 2026-11-26 found its builder broken by a refactor only there.)"""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import gpu_acceptance as acceptance

    monkeypatch.setenv("TEXT2SQL_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "random-tiny"
    acceptance.build_random_model(model_dir, 1, "tiny_codellama")
    from transformers import AutoConfig, AutoTokenizer

    config, tokenizer = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert config.num_hidden_layers == 1 and len(tokenizer) == config.vocab_size  # every generated id decodes
    assert tokenizer.pad_token is None and tokenizer.unk_token == "<unk>"  # CodeLlama's specials, no pad

    class Args:
        preset, steps, batch_size, layers = "tiny_codellama", 2, 1, 1

    out = tmp_path / "acc"
    steps = dict(acceptance.plan(Args, str(model_dir), 0, out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "bench"), str(REPO_ROOT)]),
           "WANDB_MODE": "offline"}
    for name in ("lora", "resume", "merge", "predict"):
        cmd = steps[name] + ([] if name in ("merge", "predict") else ["hardware=cpu", "eval.limit=2",
                                                                      "eval.max_new_tokens=8"])
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        row = acceptance.read_result(name, out, proc, 0.0)
        assert row["ok"], f"{name}: {row['error']}\n{proc.stderr[-3000:]}"
        if name not in ("merge", "predict"):
            stats = json.loads((out / name / "stats.json").read_text())
            assert stats["steps"] >= 1 and row["step_s"] and row["ex"] is not None  # stats and EX callbacks ran
    assert (out / "merged" / "config.json").is_file()


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Each chat family's check of the plan (hardware=cpu appended), on a 1-layer random model of the preset's shape
    built by the script's own builder; the three train.py runs start side by side (one torch thread each).
    -> (out dir, {family: the finished check as a CompletedProcess})"""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import gpu_acceptance as acceptance

    root = tmp_path_factory.mktemp("families")
    out, cache = root / "acc", root / "cache"

    class Args:
        preset, steps, batch_size, layers = "tiny_codellama", 2, 1, 1

    plan = dict(acceptance.plan(Args, str(root / "unused"), 0, out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "bench"), str(REPO_ROOT)]),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    started = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXT2SQL_CACHE", str(cache))
        for family, preset in acceptance.FAMILIES.items():
            acceptance.build_random_family(acceptance.family_dir(out, preset, 1), 1, preset, head_dim=8)
    for family in acceptance.FAMILIES:
        logs = root / f"{family}.out", root / f"{family}.err"
        with logs[0].open("w") as stdout, logs[1].open("w") as stderr:
            proc = subprocess.Popen([*plan[family], "hardware=cpu", "eval.limit=2", "eval.max_new_tokens=8"],
                                    cwd=REPO_ROOT, env={**env, "TEXT2SQL_CACHE": str(cache / family)},
                                    stdout=stdout, stderr=stderr, text=True)
        started[family] = proc, logs
    done = {}
    for family, (proc, (stdout, stderr)) in started.items():
        proc.wait(timeout=900)
        done[family] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout.read_text(), stderr.read_text())
    return out, done


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "llama3", "mistral"])
def test_each_chat_family_check_runs_on_the_cpu(families, family):
    """Qwen2 biases, Llama 3 / Mistral grouped-query attention, each family's chat template: the model the script
    builds has the preset's architecture (model type, head counts, so its grouped-query ratio) at a small head size,
    and the plan's check trains, scores and exports an adapter on it."""
    import gpu_acceptance as acceptance
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoTokenizer

    out, done = families
    model_dir = acceptance.family_dir(out, acceptance.FAMILIES[family], 1)
    config, tokenizer = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert config.num_hidden_layers == 1 and tokenizer.chat_template and len(tokenizer) == config.vocab_size
    assert config.model_type == {"qwen2": "qwen2", "llama3": "llama", "mistral": "mistral"}[family]
    preset = OmegaConf.load(REPO_ROOT / "conf" / "model" / f"{acceptance.FAMILIES[family]}.yaml").architecture
    assert (config.num_attention_heads, config.num_key_value_heads) == (preset.num_attention_heads,
                                                                        preset.num_key_value_heads)
    assert config.hidden_size == 8 * preset.num_attention_heads  # the CPU rehearsal's width (head_dim=8)
    proc = done[family]
    row = acceptance.read_result(family, out, proc, 0.0)
    assert row["ok"], f"{family}: {row['error']}\n{proc.stderr[-3000:]}"
    assert json.loads((out / family / "stats.json").read_text())["steps"] >= 1 and row["ex"] is not None
    assert (out / family / "adapter" / "adapter_config.json").is_file()
