"""QLoRA on CPU, for real: the tiny model loads in 4-bit NF4 / 8-bit through `load_model`, and LoRA keeps
training after an inference pass (generation, validation) — the bitsandbytes 0.50 CPU repacking trap."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from text2sql.data.datamodule import TextToSQLDataModule, pad_batch
from text2sql.eval.generate import generate_sql
from text2sql.model.load import load_model
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft
from tiny import tiny_setup

bnb = pytest.importorskip("bitsandbytes")

OPTIM = OmegaConf.create({"lr": 1e-2, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": "constant_with_warmup",
                          "warmup_ratio": 0.0, "warmup_steps": 0})


def qlora(bits: int) -> OmegaConf:
    quant = ({"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"} if bits == 4
             else {"bits": 8, "int8_threshold": 6.0})
    return OmegaConf.create({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                             "target_modules": ["q_proj", "v_proj", "gate_proj"], "modules_to_save": None,
                             "gradient_checkpointing": True, "quantization": quant})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("tiny"), n_train=64, n_dev=8)


class Watch(pl.Callback):
    """Per step: the loss and whether every LoRA weight got a gradient; LoRA weights at each epoch start."""

    def __init__(self):
        self.losses, self.grads_ok, self.snapshots, self.training_mode = [], [], [], []

    def on_train_epoch_start(self, trainer, module):
        self.snapshots.append({n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" in n})

    def on_after_backward(self, trainer, module):
        # LoRA B starts at zero, so A's very first gradient is zero; every gradient must exist, and from the
        # second step on, be non-zero
        grads = [p.grad for n, p in module.named_parameters() if "lora_" in n]
        first = trainer.global_step == 0
        self.grads_ok.append((trainer.current_epoch, all(g is not None and (first or g.abs().sum() > 0)
                                                         for g in grads)))
        self.training_mode.append(module.model.training)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append((trainer.current_epoch, float(outputs["loss"])))


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_after_an_inference_pass(setup, tmp_path, bits):
    dataset, model_cfg, path, tokenizer = setup
    cfg = qlora(bits)
    model = load_model(model_cfg, path, tokenizer, peft_cfg=cfg)
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantised = [m for m in model.modules() if isinstance(m, layer)]
    assert len(quantised) == 7 * 2  # every decoder linear of both layers; lm_head stays unquantised
    if bits == 4:
        assert all(m.support_avx512bf16_for_cpu is False for m in quantised)
    model = apply_peft(model, cfg)
    assert model.training and model.base_model.model.is_gradient_checkpointing

    dm = TextToSQLDataModule(dataset, tokenizer, template="vanilla", max_source_length=256, max_target_length=128,
                             batch_size=8, eval_batch_size=8)
    dm.setup("fit")
    probe = pad_batch(dm.train_items[:8], tokenizer.pad_token_id)

    def probe_loss():
        model.eval()
        with torch.no_grad():
            return float(model(**probe).loss)

    # an inference pass first, as the execution-accuracy callback does: eval mode, no_grad, generate
    generate_sql(model, tokenizer, [it.source_ids for it in dm.eval_items(limit=2)], batch_size=2, max_new_tokens=4)
    before = probe_loss()
    model.train()  # what apply_peft hands over; the callback's own passes restore it (Lightning keeps modes)
    watch = Watch()
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[watch], default_root_dir=tmp_path)
    trainer.fit(Text2SQLModule(model, OPTIM), datamodule=dm)  # epoch 0, validation, epoch 1

    assert watch.grads_ok and all(ok for _, ok in watch.grads_ok), watch.grads_ok  # also after validation
    assert all(watch.training_mode)  # training mode: checkpointing and dropout are really on
    after_val = watch.snapshots[1]  # LoRA weights when epoch 1 starts, i.e. after the validation pass
    now = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert all(not torch.equal(after_val[n], now[n].detach()) for n in after_val)  # they still move
    assert probe_loss() < before - 0.05, (before, probe_loss())
    assert min(loss for e, loss in watch.losses if e == 1) < watch.losses[0][1]


def test_full_fine_tuning_refuses_a_quantised_base(setup):
    _, model_cfg, path, tokenizer = setup
    with pytest.raises(ValueError, match="quantised"):
        load_model(model_cfg, path, tokenizer, peft_cfg=OmegaConf.merge(qlora(4), {"method": "full"}))
