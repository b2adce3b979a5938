"""Export the trained model at the end of training in Hugging Face format, next to the Lightning checkpoints.

PEFT runs write `<run dir>/adapter/` (adapter_config.json + adapter_model.safetensors + the tokenizer), loadable
with `PeftModel.from_pretrained(base, dir)` and by `text2sql merge`; `peft=full` writes the whole model to
`<run dir>/model/` (loadable with `AutoModelForCausalLM.from_pretrained`). Lightning checkpoints (for resuming)
are trimmed to the trainable weights by `Text2SQLModule.on_save_checkpoint`; DeepSpeed checkpoints by
`exclude_frozen_parameters` (see text2sql.model.strategy).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _gathered(trainer: pl.Trainer, params):
    """Under DeepSpeed ZeRO-3 the parameters are shards: gather them for the duration of the save."""
    strategy = trainer.strategy
    if getattr(strategy, "zero_stage_3", False):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
    return contextlib.nullcontext()


def export_pretrained(trainer: pl.Trainer, model, out_dir: Path, tokenizer=None) -> Path | None:
    """save_pretrained the adapter (PEFT) or the whole model (full) into out_dir on rank 0; returns the dir."""
    peft = is_peft_model(model)
    params = [p for p in model.parameters() if p.requires_grad] if peft else list(model.parameters())
    with _gathered(trainer, params):
        if trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
    trainer.strategy.barrier("export_pretrained")
    return out_dir if trainer.is_global_zero else None


class ExportPretrained(pl.Callback):
    """At the end of `fit`: `<output_dir>/adapter/` for PEFT runs, `<output_dir>/model/` for full fine-tuning."""

    def __init__(self, output_dir: str, adapter_subdir: str = "adapter", model_subdir: str = "model"):
        self.output_dir = Path(output_dir)
        self.adapter_subdir, self.model_subdir = adapter_subdir, model_subdir
        self.saved_to: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        sub = self.adapter_subdir if is_peft_model(model) else self.model_subdir
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        self.saved_to = export_pretrained(trainer, model, self.output_dir / sub, tokenizer)
        if self.saved_to is not None:
            log.info("saved the trained %s to %s", "adapter" if sub == self.adapter_subdir else "model", self.saved_to)
