"""The real DeepSpeed engine on CPU (ZeRO-2 and ZeRO-3, gloo) trains the tiny model's LoRA weights under Lightning.

Slow: the first DeepSpeed use compiles its shared-memory comm op (~35 s, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from text2sql.data.datamodule import TextToSQLDataModule
from text2sql.training.checkpoint import ExportPretrained
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft
from text2sql.training.strategy import deepspeed_strategy
from tiny import tiny_model

pytestmark = pytest.mark.slow

OPTIM = OmegaConf.create({"lr": 5e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "scheduler": "constant_with_warmup",
                          "warmup_ratio": 0.0, "warmup_steps": 0})
LORA = OmegaConf.create({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                         "target_modules": ["q_proj", "v_proj", "gate_proj"], "modules_to_save": None})
STEPS = 6


class StepTimer(pl.Callback):
    def __init__(self):
        self.times, self._t = [], None

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


@pytest.fixture(scope="module")
def setup(tiny_default):
    return tiny_default


def gathered(model, stage):
    """name -> full tensor copy of every trainable parameter (ZeRO-3 shards gathered)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if stage == 3 and any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: p.detach().clone() for n, p in params.items()}


def run(setup, tmp_path, stage, callbacks=()):
    dataset, model_cfg, path, tokenizer = setup
    torch.manual_seed(0)
    model = apply_peft(tiny_model(model_cfg, path, tokenizer), LORA)
    before = gathered(model, 0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # length-grouped batches (the default): Lightning injects its DistributedSampler even on one device
    dm = TextToSQLDataModule(dataset, tokenizer, template="vanilla", max_source_length=256, max_target_length=256,
                             batch_size=4, eval_batch_size=8)
    strategy = deepspeed_strategy({"train_micro_batch_size_per_gpu": 4}, zero_stage=stage, accelerator="cpu")
    timer = StepTimer()
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=2, limit_val_batches=1, accelerator="cpu",
                         devices=1, strategy=strategy, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[timer, *callbacks], enable_checkpointing=bool(callbacks))
    trainer.fit(Text2SQLModule(model, OPTIM), datamodule=dm)
    step_s = sorted(timer.times)[len(timer.times) // 2]
    print(f"DeepSpeed ZeRO-{stage} on CPU: median micro-batch {step_s * 1000:.0f} ms "
          f"({len(timer.times)} micro-batches of 4, accumulate 2)")
    return trainer, model, before, frozen


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_lora_on_cpu(setup, tmp_path, stage):
    trainer, model, before, frozen = run(setup, tmp_path, stage)
    assert type(trainer.strategy).__name__ == "CPUDeepSpeedStrategy"
    assert trainer.global_step == STEPS
    assert type(trainer.train_dataloader.batch_sampler).__name__ == "LengthGroupedSampler"  # issue 13 item 2
    engine = trainer.strategy.deepspeed_engine
    assert engine.zero_optimization_stage() == stage
    assert engine.gradient_accumulation_steps() == 2 and engine.train_micro_batch_size_per_gpu() == 4
    after = gathered(model, stage)
    lora_b = [n for n in before if "lora_B" in n]
    assert lora_b and all(before[n].abs().sum() == 0 for n in lora_b)
    assert all(after[n].abs().sum() > 0 for n in lora_b)  # B starts at zero and must move under ZeRO
    if stage == 2:  # (ZeRO-3 replaces frozen params by shards too; their values are gathered only on demand)
        now = dict(model.named_parameters())
        assert all(torch.equal(frozen[n], now[n]) for n in frozen)


def test_deepspeed_checkpoint_excludes_the_frozen_base_and_exports_the_adapter(setup, tmp_path):
    from peft import PeftModel

    _, model_cfg, path, tokenizer = setup
    export = ExportPretrained(str(tmp_path / "run"))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _, model, _, _ = run(setup, tmp_path, 2, callbacks=[ckpt, export])
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.is_dir()  # DeepSpeed writes a directory per checkpoint
    weights = [f for f in last.rglob("*model_states.pt")]
    assert weights
    state = torch.load(weights[0], map_location="cpu", weights_only=False)["module"]
    assert state and all("lora_" in k for k in state)  # exclude_frozen_parameters: no base weights
    out = tmp_path / "run" / "adapter"
    loaded = PeftModel.from_pretrained(tiny_model(model_cfg, path, tokenizer), out).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_deepspeed_zero2_resume_gives_the_same_next_losses(setup, tmp_path):
    """Interrupted after epoch 1 and resumed from the DeepSpeed checkpoint dir = the uninterrupted run."""
    dataset, model_cfg, path, tokenizer = setup

    class Losses(pl.Callback):
        def __init__(self):
            self.rows = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.rows.append((trainer.global_step, float(outputs["loss"]),
                              trainer.optimizers[0].param_groups[0]["lr"]))

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    optim = OmegaConf.merge(OPTIM, {"scheduler": "cosine", "warmup_steps": 1})

    def fit(root, extra=(), ckpt_path=None):
        torch.manual_seed(0)
        model = apply_peft(tiny_model(model_cfg, path, tokenizer), LORA)
        dm = TextToSQLDataModule(dataset, tokenizer, template="vanilla", max_source_length=256,
                                 max_target_length=256, batch_size=4, eval_batch_size=8, train_limit=16,
                                 val_loss_limit=4)
        losses = Losses()
        trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=2, limit_val_batches=1, accelerator="cpu",
                             devices=1, strategy=deepspeed_strategy({"train_micro_batch_size_per_gpu": 4},
                                                                   zero_stage=2, accelerator="cpu"),
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=root, callbacks=[losses, *extra])
        trainer.fit(Text2SQLModule(model, optim), datamodule=dm, ckpt_path=ckpt_path)
        return trainer, losses.rows

    _, full = fit(tmp_path / "a")
    fit(tmp_path / "b", [StopAfterFirstEpoch(), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True,
                                                               save_top_k=0)])
    trainer, resumed = fit(tmp_path / "c", ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(full) == 8 and len(resumed) == 4 and trainer.global_step == 4
    for (step_a, loss_a, lr_a), (step_b, loss_b, lr_b) in zip(full[4:], resumed):
        assert step_a == step_b and lr_a == pytest.approx(lr_b, rel=1e-12)
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-6)
