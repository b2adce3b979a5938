"""`model=tiny_codellama`: a CodeLlama stand-in whose tokenizer works the way CodeLlama's does, so CPU runs go
through what a real CodeLlama run does (unk as pad, left padding at generation, eos after the target, the
2048/512 budgets on real Spider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import REPO_ROOT, SHARED_SPIDER
from text2sql.data.datasets import corpus
from text2sql.data.prompt import IGNORE_INDEX, encode_record, encode_source
from text2sql.model.llama_tokenizer import BYTE_TOKENS, train_llama_tokenizer
from text2sql.model.load import load_model, load_tokenizer, resolve_model_path

CONF = REPO_ROOT / "conf"
SPIDER = Path(os.environ.get("SPIDER_DIR") or SHARED_SPIDER)


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "logger=none"])


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The preset's model, built once on a small generated sample (seconds), loaded as train.py loads it."""
    cache = tmp_path_factory.mktemp("tc_cache")
    cfg = compose_cfg(["model=tiny_codellama", f"paths.cache_dir={cache}", "dataset.n_train=60", "dataset.n_dev=8"])
    dataset = instantiate(cfg.dataset)
    path = resolve_model_path(cfg.model, corpus=lambda: corpus(dataset, "train"))
    tokenizer = load_tokenizer(cfg.model, path)
    return cfg, dataset, path, tokenizer


def test_preset_is_codellama_shaped():
    cfg = compose_cfg(["model=tiny_codellama"])
    assert cfg.model.template == "llama2" and cfg.data.template == "llama2"
    assert cfg.model.build.tokenizer == "llama" and cfg.dataset.name == "sample"  # a tiny model keeps the sample
    assert cfg.model.architecture.max_position_embeddings >= 2048 + 512


def test_tokenizer_works_like_codellamas():
    tok = train_llama_tokenizer(["SELECT name FROM singer WHERE age > 30", "How many singers are there?"] * 50, 400)
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None  # CodeLlama ships no pad token
    assert tok.convert_ids_to_tokens(list(range(3, 259))) == list(BYTE_TOKENS)  # <0x00>..<0xFF> at 3..258
    ids = tok("SELECT name FROM singer WHERE age > 1234\nAND x = 'Zoë'").input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert ids[0] == 1  # <s> added, no </s>
    assert pieces[1] == "▁SELECT" and "▁FROM" in pieces  # SentencePiece word starts
    i = pieces.index("▁")
    assert pieces[i:i + 5] == ["▁", "1", "2", "3", "4"]  # digits one by one, as Llama splits them
    assert "<0x0A>" in pieces  # newline is never a vocab piece: byte fallback
    assert pieces[-3:-1] == ["<0xC3>", "<0xAB>"]  # an unseen character (ë): its UTF-8 bytes
    assert "<unk>" not in pieces
    assert tok.decode(ids, skip_special_tokens=True) == "SELECT name FROM singer WHERE age > 1234\nAND x = 'Zoë'"


def test_built_model_loads_like_codellama(built):
    cfg, _, path, tokenizer = built
    saved = json.loads((Path(path) / "tokenizer_config.json").read_text())
    assert saved.get("pad_token") in (None, "") and "tokenizer.json" in os.listdir(path)
    # load_tokenizer makes unk the pad (DB-GPT-Hub's choice for CodeLlama) and pads on the left for generation
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0 and tokenizer.padding_side == "left"
    model = load_model(cfg.model, path, tokenizer)
    assert model.config.pad_token_id == 0 and model.config.eos_token_id == 2
    assert model.config.vocab_size == len(tokenizer)


def test_eos_after_the_target_and_budgets(built):
    cfg, dataset, _, tok = built
    record = dataset.records("train")[0]
    ex = encode_record(record, tok, "llama2", 2048, 512)
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[-1] == tok.eos_token_id
    assert ex.labels[: ex.source_len] == [IGNORE_INDEX] * ex.source_len and ex.labels[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[: ex.source_len]).startswith("<s> [INST] <<SYS>>")
    assert ex.truncation is None and tok.pad_token_id not in ex.input_ids  # unk never appears in real data
    # budgets: a source over max_source_length is cut (schema first), a target over max_target_length keeps eos
    short = encode_record({**record, "output": record["output"] + " AND 1 = 1" * 40}, tok, "llama2", 200, 16)
    assert len(short.input_ids) - short.source_len == 16 and short.labels[-1] == tok.eos_token_id
    assert short.source_len <= 200 and "target" in short.truncation
    source, _ = encode_source(record, tok, "llama2", 200)
    assert source == short.input_ids[: short.source_len]  # generation sees the prompt training saw


def test_left_padding_at_generation_matches_one_by_one(built):
    """unk as pad on the left: a batch generates what each prompt generates alone."""
    import torch

    from text2sql.eval.generate import generate_sql

    cfg, dataset, path, tok = built
    torch.manual_seed(0)
    model = load_model(cfg.model, path, tok)
    records = dataset.records("dev")[:3]
    sources = [encode_source(r, tok, "llama2", 512)[0][: 60 + 25 * i] for i, r in enumerate(records)]
    assert len({len(s) for s in sources}) == 3
    together = generate_sql(model, tok, sources, batch_size=3, max_new_tokens=6)
    alone = [generate_sql(model, tok, [s], batch_size=1, max_new_tokens=6)[0] for s in sources]
    assert together == alone


@pytest.mark.slow
def test_trains_on_real_spider_with_hardware_auto(tmp_path):
    """End to end through train.py: hardware=auto picks the CPU here, real Spider (else the sample) is read,
    prompts are cut at the smoke budget, the EX callback generates with left padding, metrics.json is written."""
    data = [f"dataset.root={SPIDER}", "dataset=spider"] if (SPIDER / "dev.json").is_file() else []
    run = tmp_path / "run"
    env = {**os.environ, "TEXT2SQL_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", "model=tiny_codellama", *data, "debug=smoke", "logger=none",
         "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.batch_size=4", "data.train_limit=64",
         "eval.limit=4", "eval.max_new_tokens=12", f"hydra.run.dir={run}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "hardware=auto chose cpu" in log and "no CUDA" in log
    import yaml

    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["hardware"]["name"] == "auto"  # as composed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and "val/execution_accuracy" in metrics["final"]
    if data:
        assert "cut to fit max_source_length=512" in log  # smoke's 512-token budget cuts real Spider schemas
    assert (run / "adapter" / "adapter_config.json").is_file()
