"""Packing keeps every example's loss, the head-on-targets loss equals the full one, and gradients are normalised
per target token over the accumulated batch (with and without packing)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from text2sql.data.datamodule import TextToSQLDataModule, pad_batch
from text2sql.data.prompt import IGNORE_INDEX
from text2sql.data.packing import add_target_positions, pack_batch, pack_rows
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft
from tiny import tiny_model

OPTIM = OmegaConf.create({"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": "constant",
                          "warmup_ratio": 0.0, "warmup_steps": 0})
LORA = OmegaConf.create({"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                         "target_modules": ["q_proj", "v_proj", "down_proj"], "modules_to_save": ["lm_head"]})


@pytest.fixture(scope="module")
def setup(tiny_default):
    dataset, model_cfg, path, tokenizer = tiny_default
    dm = TextToSQLDataModule(dataset, tokenizer, max_source_length=256, max_target_length=64, batch_size=8)
    dm.setup("fit")
    # examples of clearly different lengths (prompts cut to 12..187 tokens), so packing has something to do
    chosen = []
    for j, it in enumerate(dm.train_items[:8]):
        n_prompt = sum(label == IGNORE_INDEX for label in it["labels"])
        keep = 12 + 25 * j
        chosen.append({"input_ids": it["input_ids"][:keep] + it["input_ids"][n_prompt:],
                       "labels": [IGNORE_INDEX] * keep + it["labels"][n_prompt:]})
    return model_cfg, path, tokenizer, chosen


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 3, 2, 8, 1], capacity=8)
    assert rows == [[3], [0, 1], [2, 4]]
    assert all(sum([5, 3, 2, 8, 1][i] for i in row) <= 8 for row in rows)


def test_packed_layout(setup):
    _, _, tokenizer, items = setup
    batch = pack_batch(items, tokenizer.pad_token_id)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] < len(items)  # fewer, fuller rows
    assert batch["input_ids"].shape[1] == max(len(it["input_ids"]) for it in items)
    real = batch["input_ids"] != tokenizer.pad_token_id
    assert int(real.sum()) == sum(len(it["input_ids"]) for it in items)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(
        sum(label != IGNORE_INDEX for label in it["labels"]) for it in items)
    starts = (batch["position_ids"] == 0) & real
    assert int(starts.sum()) == len(items) and (batch["labels"][starts] == IGNORE_INDEX).all()


def _per_example_losses(logits, labels, position_ids=None):
    """Per-example mean next-token loss from full logits; examples split where position_ids restart."""
    out = []
    for r in range(labels.shape[0]):
        loss = F.cross_entropy(logits[r, :-1].float(), labels[r, 1:], reduction="none", ignore_index=IGNORE_INDEX)
        valid = labels[r, 1:] != IGNORE_INDEX
        seg = (position_ids[r, 1:] == 0).cumsum(0) if position_ids is not None else torch.zeros_like(valid, dtype=torch.long)
        for s in seg[valid].unique().tolist():
            m = valid & (seg == s)
            out.append(float(loss[m].mean()))
    return sorted(out)


def test_per_example_loss_packed_equals_unpacked(setup):
    model_cfg, path, tokenizer, items = setup
    model = tiny_model(model_cfg, path, tokenizer).eval()
    with torch.no_grad():
        alone = []
        for it in items:  # the reference: each example on its own, no padding at all
            ids = torch.tensor([it["input_ids"]])
            alone += _per_example_losses(model(input_ids=ids).logits, torch.tensor([it["labels"]]))
        packed = pack_batch(items, tokenizer.pad_token_id)
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        in_rows = _per_example_losses(logits, packed["labels"], packed["position_ids"])
    assert len(in_rows) == len(alone) == len(items)
    assert in_rows == pytest.approx(sorted(alone), rel=1e-4, abs=1e-5)


def test_head_on_targets_equals_full_loss_padded_and_packed(setup):
    model_cfg, path, tokenizer, items = setup
    module = Text2SQLModule(apply_peft(tiny_model(model_cfg, path, tokenizer), LORA), OPTIM)
    padded = pad_batch(items, tokenizer.pad_token_id)
    with torch.no_grad():
        full = module.model(**padded).loss  # transformers' own loss: logits everywhere, mean over targets
        s_pad, n_pad = module.target_loss(add_target_positions(dict(padded)))
        s_pack, n_pack = module.target_loss(add_target_positions(pack_batch(items, tokenizer.pad_token_id)))
        s_derived, _ = module.target_loss(dict(padded))  # no precomputed index: derived in the module
    assert module._decoder_and_head() is not None  # the fast path (decoder + head) was taken
    assert int(n_pad) == int(n_pack) == int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert float(s_pad / n_pad) == pytest.approx(float(full), rel=1e-5)
    assert float(s_pack) == pytest.approx(float(s_pad), rel=1e-5)
    assert float(s_derived) == pytest.approx(float(s_pad), rel=1e-6)


class _Grads(pl.Callback):
    """The gradients the optimizer applied (after the module's normalisation; zeroed only at the next step)."""

    grads: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _one_step_grads(model_cfg, path, tokenizer, batches, accumulate, tmp_path):
    torch.manual_seed(0)
    module = Text2SQLModule(apply_peft(tiny_model(model_cfg, path, tokenizer), LORA), OPTIM)
    grads = _Grads()
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[grads], default_root_dir=tmp_path, gradient_clip_val=None)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return grads.grads


@pytest.mark.parametrize("packing", [False, True])
def test_accumulated_gradients_are_per_target_token(setup, tmp_path, packing):
    model_cfg, path, tokenizer, items = setup
    collate = pack_batch if packing else pad_batch
    small, large = items[:2], items[2:]  # micro-batches with very different target counts
    n_small = sum(sum(label != IGNORE_INDEX for label in it["labels"]) for it in small)
    n_large = sum(sum(label != IGNORE_INDEX for label in it["labels"]) for it in large)
    assert n_large > 2 * n_small  # so a mean of per-micro-batch means would differ clearly
    whole = _one_step_grads(model_cfg, path, tokenizer, [add_target_positions(pad_batch(items, tokenizer.pad_token_id))],
                            1, tmp_path / "whole")
    split = _one_step_grads(model_cfg, path, tokenizer,
                            [add_target_positions(collate(part, tokenizer.pad_token_id)) for part in (small, large)],
                            2, tmp_path / "split")
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7)


def test_datamodule_packing_option(setup, tmp_path):
    model_cfg, path, tokenizer, _ = setup
    from text2sql.data.datasets import sample

    dataset = sample(str(tmp_path / "data"), seed=0, n_train=40, n_dev=4)
    batches = {}
    for packing in (False, True):
        dm = TextToSQLDataModule(dataset, tokenizer, max_source_length=256, max_target_length=64, batch_size=8,
                                 group_by_length=False, packing=packing)
        dm.setup("fit")
        batches[packing] = next(iter(dm.val_dataloader()))  # unshuffled: the same 8 examples both ways
    plain, packed = batches[False], batches[True]
    assert "position_ids" in packed and "attention_mask" not in packed and "attention_mask" in plain
    for b in (plain, packed):  # the precomputed target index matches the labels
        flat = b["labels"].reshape(-1)
        assert (flat[b["target_positions"] + 1] != IGNORE_INDEX).all()
    assert len(plain["target_positions"]) == len(packed["target_positions"])
