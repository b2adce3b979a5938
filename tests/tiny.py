"""Helpers to build the tiny model and the sample data in a temp dir, through the production code."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from text2sql.data.datasets import corpus, sample
from text2sql.model.load import load_model, load_tokenizer, resolve_model_path

ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False)


def tiny_setup(root: Path, n_train: int = 200, n_dev: int = 20, vocab_size: int = 512):
    """(dataset, model_cfg, model_path, tokenizer) for a small random Llama trained-tokenizer on the sample."""
    dataset = sample(str(root / "data"), seed=0, n_train=n_train, n_dev=n_dev)
    model_cfg = OmegaConf.create({
        "name": "tiny-test", "path": None, "dtype": "float32", "template": "vanilla",
        "build": {"cache_dir": str(root / "models"), "vocab_size": vocab_size, "seed": 0,
                  "data_key": f"test-{n_train}", "merge_preamble": True},
        "architecture": ARCH,
    })
    path = resolve_model_path(model_cfg, corpus=lambda: corpus(dataset))
    tokenizer = load_tokenizer(model_cfg, path)
    return dataset, model_cfg, path, tokenizer


def tiny_model(model_cfg, path, tokenizer):
    return load_model(model_cfg, path, tokenizer)
