"""The data pipeline masks prompts, and a short Lightning fit really trains the LoRA weights."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from text2sql.data.datamodule import TextToSQLDataModule, pad_batch
from text2sql.data.prompt import IGNORE_INDEX
from text2sql.eval.generate import extract_sql, generate_sql
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft, count_parameters
from tiny import tiny_model

OPTIM = OmegaConf.create({"lr": 5e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": "constant_with_warmup",
                          "warmup_ratio": 0.0, "warmup_steps": 0})
LORA = OmegaConf.create({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                         "target_modules": ["q_proj", "v_proj", "gate_proj"], "modules_to_save": ["lm_head"]})


@pytest.fixture(scope="module")
def setup(tiny_default):
    return tiny_default


def make_datamodule(dataset, tokenizer, **kw):
    return TextToSQLDataModule(dataset, tokenizer, template="vanilla", max_source_length=256,
                               max_target_length=256, batch_size=8, eval_batch_size=8, **kw)


def test_labels_mask_every_prompt_token(setup):
    dataset, _, _, tokenizer = setup
    dm = make_datamodule(dataset, tokenizer)
    dm.setup("fit")
    records = dataset.records("train")
    for record, item in zip(records[:50], dm.train_items):
        target = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n_prompt = len(item["input_ids"]) - len(target)
        assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert item["labels"][n_prompt:] == target == item["input_ids"][n_prompt:]
    batch = pad_batch(dm.train_items[:4], tokenizer.pad_token_id)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()  # padding never contributes to the loss


def test_lora_weights_change_after_short_fit(setup, tmp_path):
    dataset, model_cfg, path, tokenizer = setup
    model = apply_peft(tiny_model(model_cfg, path, tokenizer), LORA)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(Text2SQLModule(model, OPTIM), datamodule=make_datamodule(dataset, tokenizer))
    after = dict(model.named_parameters())
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and all(not torch.equal(before[n], after[n]) for n in lora_b)  # B starts at 0 and must move
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)  # the base stays frozen


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradient_clipping_trains_under_mixed_precision(setup, tmp_path, precision):
    """Every GPU preset is bf16-mixed with gradient_clip_val 1.0; Lightning's MixedPrecision plugin refuses to clip
    a fused optimizer (found on an H200 by bench/gpu_acceptance.sh). The same plugin runs here on the CPU."""
    dataset, model_cfg, path, tokenizer = setup
    model = apply_peft(tiny_model(model_cfg, path, tokenizer), LORA)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu",
                         precision=precision, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    module = Text2SQLModule(model, OPTIM)
    trainer.fit(module, datamodule=make_datamodule(dataset, tokenizer))
    assert trainer.global_step == 2
    optimizer = trainer.optimizers[0]
    # fused where Lightning allows it (full precision), the foreach loop under the mixed-precision plugin
    assert bool(optimizer.defaults["fused"]) == (precision == "32-true")


def test_batched_generation_matches_one_at_a_time(setup):
    dataset, model_cfg, path, tokenizer = setup
    model = tiny_model(model_cfg, path, tokenizer)
    dm = make_datamodule(dataset, tokenizer)
    items = dm.eval_items(limit=6)
    sources = [it.source_ids for it in items]
    batched = generate_sql(model, tokenizer, sources, batch_size=6, max_new_tokens=12)
    single = [generate_sql(model, tokenizer, [s], batch_size=1, max_new_tokens=12)[0] for s in sources]
    assert batched == single  # left padding + attention mask change nothing


def test_eval_subset_is_fixed_by_seed(setup):
    dataset, _, _, tokenizer = setup
    dm = make_datamodule(dataset, tokenizer)
    a = [it.index for it in dm.eval_items(limit=5, seed=1)]
    assert a == [it.index for it in dm.eval_items(limit=5, seed=1)]
    assert a != [it.index for it in dm.eval_items(limit=5, seed=2)] and a == sorted(a)


@pytest.mark.parametrize("text,sql", [
    ("SELECT a FROM t", "SELECT a FROM t"),
    ("  SELECT a\n FROM t; SELECT 2", "SELECT a FROM t"),
    ("```sql\nSELECT a FROM t\n```", "SELECT a FROM t"),
    ("SELECT a FROM t</s>junk", "SELECT a FROM t"),
    ("", ""),
])
def test_extract_sql(text, sql):
    assert extract_sql(text) == sql


def test_length_grouped_batches_depend_only_on_seed_and_epoch():
    from text2sql.data.datamodule import LengthGroupedSampler

    lengths = [(i * 37) % 50 + 1 for i in range(300)]
    a, b = LengthGroupedSampler(lengths, 8, seed=1), LengthGroupedSampler(lengths, 8, seed=1)
    list(a)  # a consumed epoch 0; b jumps straight to epoch 3 as a resumed run does
    a.set_epoch(3)
    b.set_epoch(3)
    batches = list(a)
    assert batches == list(b)
    assert sorted(i for batch in batches for i in batch) == list(range(300))  # every example once
    b.set_epoch(4)
    assert list(b) != batches
    spread = [max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in batches]
    assert sum(spread) / len(spread) < 10  # similar lengths share a batch (random batches spread ~40)
