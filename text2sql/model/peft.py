"""Wrap a base model with the configured parameter-efficient method (or none, for full fine-tuning)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _as_list(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value if value == "all-linear" else [v.strip() for v in value.split(",") if v.strip()]
    return list(OmegaConf.to_container(value, resolve=True)) if not isinstance(value, list) else value


def apply_peft(model, peft_cfg: DictConfig):
    """Return the model to train: a PEFT model for `lora` (and the quantised qlora4 / qlora8), the model
    itself for `full`.

    A quantised base (loaded by `load_model` with `peft.quantization`) goes through PEFT's k-bit preparation
    first: frozen base, fp32 norms/embeddings/head, input grads for checkpointing. `peft.gradient_checkpointing`
    turns activation checkpointing on for any method.
    """
    method = peft_cfg.method
    checkpointing = bool(peft_cfg.get("gradient_checkpointing") or False)
    quantised = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if method == "full":
        if quantised:
            raise ValueError("peft.method=full cannot train quantised weights; use peft=lora, qlora4 or qlora8")
        for p in model.parameters():
            p.requires_grad_(True)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()
    if method != "lora":
        raise ValueError(f"unknown peft.method '{method}' (expected lora or full)")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantised:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=int(peft_cfg.r),
        lora_alpha=float(peft_cfg.alpha),
        lora_dropout=float(peft_cfg.dropout),
        target_modules=_as_list(peft_cfg.target_modules),
        modules_to_save=_as_list(peft_cfg.get("modules_to_save")),
        bias="none",
    )
    model = get_peft_model(model, config)
    # from_pretrained returns eval mode and Lightning (>= 2.2) keeps a module's mode at fit start: without
    # this, LoRA dropout and gradient checkpointing (active only in training mode) would silently be off.
    return model.train()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
