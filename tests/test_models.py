"""The model and peft groups: every combination composes, the architectures are CodeLlama's, and a missing
model is one line that says where we looked and how to set `model.path`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from text2sql.model import load as load_mod
from text2sql.model.load import check_model_path, quantization_config

CONF = REPO_ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
PEFTS = sorted(p.stem for p in (CONF / "peft").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def resolved(overrides) -> dict:
    cfg = compose_cfg([*overrides, "logger=none"])
    OmegaConf.update(cfg, "callbacks", {}, merge=False)  # ${hydra:...} needs a running app; not under test here
    return OmegaConf.to_container(cfg, resolve=True)


def test_groups_have_the_presets():
    assert {"tiny", "codellama7b", "codellama13b", "codellama34b"} <= set(MODELS)
    assert {"lora", "qlora4", "qlora8", "full", "dora", "ptuning", "freeze"} <= set(PEFTS)
    assert {"qwen25_coder_1_5b", "qwen25_coder_7b", "qwen25_coder_14b", "qwen25_coder_32b", "llama31_8b",
            "deepseek_coder_6_7b", "mistral_7b", "tiny_qwen", "tiny_llama3"} <= set(MODELS)
    assert {"dbgpt_hub_codellama13b_lora", "dbgpt_hub_codellama13b_qlora4"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_x_peft_composes(model):
    for peft in PEFTS:
        cfg = resolved([f"model={model}", f"peft={peft}"])
        assert cfg["peft"]["method"] in ("lora", "dora", "ptuning", "freeze", "full")
        if cfg["peft"]["method"] in ("lora", "dora"):
            assert cfg["peft"]["r"] == cfg["model"]["lora"]["r"]
            assert cfg["peft"]["target_modules"] == cfg["model"]["lora"]["target_modules"]
        assert cfg["optim"]["lr"] == cfg["model"]["recommended"]["lr"]
        assert cfg["data"]["template"] == cfg["model"]["template"]


ARCH = {
    "codellama7b": (32016, 4096, 11008, 32, 32, 32),
    "codellama13b": (32016, 5120, 13824, 40, 40, 40),
    "codellama34b": (32000, 8192, 22016, 48, 64, 8),
}


@pytest.mark.parametrize("model", sorted(ARCH))
def test_codellama_presets(model):
    cfg = resolved([f"model={model}"])["model"]
    a = cfg["architecture"]
    assert (a["vocab_size"], a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"],
            a["num_attention_heads"], a["num_key_value_heads"]) == ARCH[model]
    assert a["rope_theta"] == 1e6
    assert cfg["path"] == f"codellama/CodeLlama-{model.removeprefix('codellama')}-Instruct-hf"
    assert cfg["template"] == "llama2" and cfg["dtype"] == "bfloat16"
    assert cfg["lora"] == {"r": 64, "alpha": 32, "target_modules": ["q_proj", "v_proj"], "modules_to_save": None}
    assert cfg["recommended"] == {"lr": 2e-4, "batch_size": 1, "grad_accum": 16, "epochs": 8}


def test_quantisation_presets():
    import torch

    q4 = compose_cfg(["model=codellama13b", "peft=qlora4"]).peft
    bnb4 = quantization_config(q4)
    assert bnb4.load_in_4bit and bnb4.bnb_4bit_quant_type == "nf4" and bnb4.bnb_4bit_use_double_quant
    assert bnb4.bnb_4bit_compute_dtype == torch.bfloat16 and q4.gradient_checkpointing
    assert bnb4.bnb_4bit_quant_storage == torch.uint8
    zero3 = quantization_config(compose_cfg(["peft=qlora4", "peft.quantization.quant_storage=bfloat16"]).peft)
    assert zero3.bnb_4bit_quant_storage == torch.bfloat16
    assert quantization_config(compose_cfg(["peft=qlora8"]).peft).load_in_8bit
    assert quantization_config(compose_cfg(["peft=lora"]).peft) is None
    assert quantization_config(compose_cfg(["peft=qlora4"]).peft).bnb_4bit_compute_dtype == torch.float32  # tiny


def test_dbgpt_hub_experiments_are_the_recipe():
    for name, method, bits in [("dbgpt_hub_codellama13b_lora", "lora", None),
                               ("dbgpt_hub_codellama13b_qlora4", "lora", 4)]:
        cfg = resolved([f"experiment={name}"])
        assert cfg["model"]["path"] == "codellama/CodeLlama-13b-Instruct-hf"
        assert cfg["model"]["architecture"]["hidden_size"] == 5120
        assert (cfg["peft"]["method"], cfg["peft"]["r"], cfg["peft"]["alpha"]) == (method, 64, 32)
        assert cfg["peft"]["target_modules"] == ["q_proj", "v_proj"]
        assert (cfg["peft"].get("quantization") or {}).get("bits") == bits
        assert cfg["data"]["template"] == "llama2"
        assert cfg["dataset"]["name"] == "spider"
        assert (cfg["dataset"]["max_source_length"], cfg["dataset"]["max_target_length"]) == (2048, 512)
        assert cfg["data"]["batch_size"] == 1 and cfg["trainer"]["accumulate_grad_batches"] == 16
        assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["scheduler"] == "cosine_with_restarts"
        assert cfg["trainer"]["max_epochs"] == 8 and cfg["trainer"]["log_every_n_steps"] == 50
        assert cfg["trainer"]["precision"] == "bf16-mixed"
        raw = compose_cfg([f"experiment={name}"])
        assert raw.callbacks.model_checkpoint.every_n_train_steps == 2000


def test_model_path_checks(tmp_path, monkeypatch):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text("{}")
    assert check_model_path(str(tmp_path / "ok")) == str(tmp_path / "ok")
    for bad in [tmp_path / "missing", tmp_path]:  # no dir; a dir without config.json
        with pytest.raises(FileNotFoundError) as err:
            check_model_path(str(bad))
        assert str(bad) in str(err.value) and "model.path" in str(err.value) and "\n" not in str(err.value)
    from huggingface_hub import constants  # read at its import: what load.py asks (HF_HUB_OFFLINE, HF_HUB_CACHE)

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(load_mod, "hub_reachable", lambda *a, **k: (True, ""))  # online: the hub id as given
    assert check_model_path("codellama/CodeLlama-7b-Instruct-hf") == "codellama/CodeLlama-7b-Instruct-hf"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as err:
        check_model_path("codellama/CodeLlama-7b-Instruct-hf")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and str(tmp_path / "hub") in msg and "model.path" in msg and "\n" not in msg


def test_missing_model_path_is_one_line(tmp_path):
    missing = tmp_path / "no_such_model"
    env = {**os.environ, "TEXT2SQL_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    # data is checked first (before torch): give it a small generated sample, then the model check must stop it
    proc = subprocess.run([sys.executable, "train.py", "model=codellama7b", f"model.path={missing}", "logger=none",
                           "dataset=sample", "dataset.n_train=40", "dataset.n_dev=8",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0] and "model.path" in lines[0] and "Traceback" not in proc.stderr


def test_checkpoint_config_wins_with_a_warning(caplog):
    from transformers import LlamaConfig

    from text2sql.model.load import check_architecture

    cfg = compose_cfg(["model=codellama34b"]).model
    real = LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=48,
                       num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=16384,
                       rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False)
    assert check_architecture(cfg, real) == []
    real.num_key_value_heads = 64
    with caplog.at_level("WARNING"):
        assert check_architecture(cfg, real) == ["num_key_value_heads: yaml 8 != checkpoint 64"]
    assert "checkpoint's config wins" in caplog.text


CHAT_PRESETS = {  # hub id, model_type: every new preset renders through the tokenizer's chat template
    "qwen25_coder_1_5b": ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "qwen2"),
    "qwen25_coder_7b": ("Qwen/Qwen2.5-Coder-7B-Instruct", "qwen2"),
    "qwen25_coder_14b": ("Qwen/Qwen2.5-Coder-14B-Instruct", "qwen2"),
    "qwen25_coder_32b": ("Qwen/Qwen2.5-Coder-32B-Instruct", "qwen2"),
    "llama31_8b": ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
    "deepseek_coder_6_7b": ("deepseek-ai/deepseek-coder-6.7b-instruct", "llama"),
    "mistral_7b": ("mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
}


@pytest.mark.parametrize("model", sorted(CHAT_PRESETS))
def test_chat_model_presets(model):
    cfg = resolved([f"model={model}"])
    path, model_type = CHAT_PRESETS[model]
    m = cfg["model"]
    assert (m["path"], m["architecture"]["model_type"], m["template"], m["dtype"]) == (path, model_type, "chat",
                                                                                       "bfloat16")
    assert cfg["data"]["template"] == "chat" and cfg["dataset"]["name"] == "spider"
    assert m["source"] and m["lora"]["target_modules"] and set(m["recommended"]) == {"lr", "batch_size",
                                                                                      "grad_accum", "epochs"}


def test_peft_method_keys_compose_and_are_typed():
    cfg = resolved(["model=qwen25_coder_7b", "peft=ptuning", "peft.num_virtual_tokens=16"])["peft"]
    assert (cfg["method"], cfg["num_virtual_tokens"]) == ("ptuning", 16)
    cfg = resolved(["model=qwen25_coder_7b", "peft=freeze", "peft.trainable_layers=4"])["peft"]
    assert (cfg["method"], cfg["trainable_layers"]) == ("freeze", 4)
    assert resolved(["peft=lora", "peft.use_rslora=true"])["peft"]["use_rslora"] is True
    assert resolved(["peft=dora"])["peft"]["method"] == "dora"
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):  # typed: a wrong type fails while composing
        compose_cfg(["peft=freeze", "peft.trainable_layers=many"])
    from text2sql.config.schema import check_config
    from text2sql.errors import ConfigError

    with pytest.raises(ConfigError, match="peft.num_virtual_tokens=0"):
        check_config(compose_cfg(["peft=ptuning", "peft.num_virtual_tokens=0", "logger=none"]))
