"""`dry_run=true` sizes a run from the YAML's architecture: exact counts, a memory estimate, no weights loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO_ROOT
from text2sql.model.sizing import dry_run

CONF = REPO_ROOT / "conf"


def run_dry(tmp_path, *overrides) -> dict:
    """The real path: `python train.py ... dry_run=true`, offline, then read dry_run.json from the run dir."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TEXT2SQL_CACHE": str(tmp_path / "cache"),
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "train.py", *overrides, "dry_run=true", f"hydra.run.dir={out}",
                           "logger=none"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "total params" in proc.stdout and "estimate" in proc.stdout
    assert not (tmp_path / "cache").exists()  # no dataset generated, no tiny model built
    assert not (out / "metrics.json").exists()
    return json.loads((out / "dry_run.json").read_text())


def test_codellama13b_lora_counts_through_train_py(tmp_path):
    record = run_dry(tmp_path, "model=codellama13b", "peft=lora")
    assert record["total_params"] == 13_016_028_160
    assert record["trainable_params"] == 52_428_800
    assert record["adapter_params"] == 52_428_800
    mem = record["memory"]
    assert mem["per_device_gib"] > 0 and "estimate" in mem["label"]
    assert set(mem["terms_gib"]) >= {"weights", "adapter", "gradients", "optimizer_states", "activations_estimate"}


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "logger=none"])


@pytest.mark.parametrize("model,total,lora", [
    ("codellama7b", 6_738_546_688, 33_554_432),
    ("codellama13b", 13_016_028_160, 52_428_800),
    ("codellama34b", 33_743_970_304, 78_643_200),  # v_proj 8192 -> 1024 (8 key/value heads)
])
def test_exact_counts_for_every_size(tmp_path, model, total, lora):
    for peft in ("lora", "qlora4", "qlora8"):
        record = dry_run(compose_cfg([f"model={model}", f"peft={peft}"]), tmp_path / peft)
        assert (record["total_params"], record["trainable_params"]) == (total, lora), peft
    record = dry_run(compose_cfg([f"model={model}", "peft=full"]), tmp_path / "full")
    assert record["trainable_params"] == record["total_params"] == total


def test_13b_qlora4_fits_a_24gb_card_and_full_does_not(tmp_path):
    spider = ["dataset=spider", "model=codellama13b"]  # DB-GPT-Hub budgets: 2048 + 512 tokens
    q4 = dry_run(compose_cfg([*spider, "peft=qlora4", "hardware=gpu"]), tmp_path / "q4")["memory"]
    full = dry_run(compose_cfg([*spider, "peft=full", "hardware=gpu"]), tmp_path / "full")["memory"]
    lora = dry_run(compose_cfg([*spider, "peft=lora", "hardware=gpu"]), tmp_path / "lora")["memory"]
    assert q4["fits_gib"]["24"] and q4["per_device_gib"] < 24
    assert not full["fits_gib"]["24"] and not full["fits_gib"]["80"]
    assert q4["per_device_gib"] < lora["per_device_gib"] < full["per_device_gib"]
    assert q4["assumptions"]["sequence_length"] == 2560 and q4["assumptions"]["gradient_checkpointing"]
    # 4-bit weights: ~0.5 byte per quantised parameter (+ constants), the rest fp32 after k-bit preparation
    assert 6.5 < q4["terms_gib"]["weights"] < 8


def test_zero_sharding_divides_by_world_size(tmp_path):
    base = ["model=codellama13b", "peft=full", "dataset=spider"]
    one = dry_run(compose_cfg(base), tmp_path / "one")["memory"]
    z3 = dry_run(compose_cfg([*base, "++hardware.zero_stage=3", "hardware.devices=8"]), tmp_path / "z3")["memory"]
    assert z3["assumptions"]["world_size"] == 8 and z3["assumptions"]["zero_stage"] == 3
    assert z3["terms_gib"]["weights"] == pytest.approx(one["terms_gib"]["weights"] / 8, rel=1e-3)
    assert z3["per_device_gib"] < one["per_device_gib"] / 2


# Totals as the published config.json files give them (the model cards' parameter counts).
PUBLISHED = {
    "qwen25_coder_1_5b": 1_543_714_304,  # tied embeddings: the head is not counted twice
    "qwen25_coder_7b": 7_615_616_512,
    "qwen25_coder_14b": 14_770_033_664,
    "qwen25_coder_32b": 32_763_876_352,
    "llama31_8b": 8_030_261_248,
    "deepseek_coder_6_7b": 6_740_512_768,
    "mistral_7b": 7_248_023_552,
}


def expected_trainable(arch: dict, peft: dict) -> int:
    """What each method trains, from the architecture by hand (independent of PEFT's bookkeeping)."""
    h, inter, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = arch["num_key_value_heads"] * h // arch["num_attention_heads"]
    bias = arch["model_type"] == "qwen2"  # Qwen2: q/k/v projections have biases
    r = peft.get("r")
    if peft["method"] in ("lora", "dora"):  # q_proj h->h and v_proj h->kv
        lora = r * (h + h) + r * (h + kv)
        return layers * (lora + ((h + kv) if peft["method"] == "dora" else 0))  # DoRA: a magnitude per output
    if peft["method"] == "ptuning":  # a key and a value prefix per layer (kv wide under grouped-query attention)
        return peft["num_virtual_tokens"] * layers * 2 * kv
    if peft["method"] == "freeze":
        layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h + ((h + 2 * kv) if bias else 0)
        return peft["trainable_layers"] * layer
    raise AssertionError(peft["method"])


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_new_presets_count_exactly_for_every_method(tmp_path, model):
    from omegaconf import OmegaConf

    pinned = model in ("qwen25_coder_7b", "llama31_8b")  # every method; the others two (each costs seconds)
    for peft in ("lora", "dora", "ptuning", "freeze", "full", "qlora4") if pinned else ("dora", "freeze"):
        cfg = compose_cfg([f"model={model}", f"peft={peft}"] + (["peft.use_rslora=true"] if peft == "lora" else []))
        record = dry_run(cfg, tmp_path / peft)
        assert record["total_params"] == PUBLISHED[model], peft
        p = OmegaConf.to_container(cfg.peft, resolve=True)
        want = record["total_params"] if peft == "full" else expected_trainable(
            OmegaConf.to_container(cfg.model.architecture), p)
        assert record["trainable_params"] == want, peft
