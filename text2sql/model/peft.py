"""Wrap a base model with the configured fine-tuning method: lora / dora (+ rsLoRA), ptuning, freeze or full.

`lora` (and the quantised qlora4 / qlora8) and `dora` are PEFT LoRA adapters, DoRA adding a learned magnitude per
output feature (`use_dora`); `peft.use_rslora=true` scales any of them by alpha / sqrt(r). `ptuning` is P-tuning v2
as PEFT implements it (prefix tuning: trained key/value prefixes of `num_virtual_tokens` in every layer). `freeze`
is DB-GPT-Hub's: the last `trainable_layers` decoder layers train, everything else stays frozen, no adapter.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from text2sql.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("lora", "dora", "ptuning", "freeze", "full")
ADAPTER_METHODS = ("lora", "dora", "ptuning")  # what PeftModel wraps; freeze and full save the whole model


def _as_list(value):
    if value is None:
        return None
    if isinstance(value, str):
        return value if value == "all-linear" else [v.strip() for v in value.split(",") if v.strip()]
    return list(OmegaConf.to_container(value, resolve=True)) if not isinstance(value, list) else value


def _checkpointing(model, on: bool) -> None:
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model):
    """The decoder's list of layers (Llama, Qwen2, Mistral: `model.model.layers`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError(f"peft.method=freeze: {type(base).__name__} has no decoder `layers` to unfreeze")
    return layers


def freeze_all_but_last(model, n: int, modules=None):
    """DB-GPT-Hub's freeze tuning: only the last `n` decoder layers (or their `modules`, e.g. [mlp]) train."""
    layers = decoder_layers(model)
    if not 1 <= n <= len(layers):
        raise ConfigError(f"peft.trainable_layers={n} must be in 1..{len(layers)} (this model's decoder layers)")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-n:]:
        parts = [getattr(layer, m) for m in modules] if modules else [layer]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(True)
    return model


def _lora_config(peft_cfg: DictConfig):
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=int(peft_cfg.r),
        lora_alpha=float(peft_cfg.alpha),
        lora_dropout=float(peft_cfg.dropout),
        target_modules=_as_list(peft_cfg.target_modules),
        modules_to_save=_as_list(peft_cfg.get("modules_to_save")),
        bias="none",
        use_rslora=bool(peft_cfg.get("use_rslora") or False),
        use_dora=peft_cfg.method == "dora" or bool(peft_cfg.get("use_dora") or False),
    )


def _prefix_config(peft_cfg: DictConfig):
    from peft import PrefixTuningConfig

    n = int(peft_cfg.num_virtual_tokens)
    if n < 1:
        raise ConfigError(f"peft.num_virtual_tokens={n} must be >= 1")
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n,
                              prefix_projection=bool(peft_cfg.get("prefix_projection") or False),
                              encoder_hidden_size=int(peft_cfg.get("encoder_hidden_size") or 0) or None)


def apply_peft(model, peft_cfg: DictConfig):
    """Return the model to train: a PEFT model for lora / dora / ptuning (and the quantised qlora4 / qlora8), the
    model itself with only its last layers trainable for `freeze`, or with everything trainable for `full`.

    A quantised base (loaded by `load_model` with `peft.quantization`) goes through PEFT's k-bit preparation
    first: frozen base, fp32 norms/embeddings/head, input grads for checkpointing. `peft.gradient_checkpointing`
    turns activation checkpointing on for any method.
    """
    method = peft_cfg.method
    checkpointing = bool(peft_cfg.get("gradient_checkpointing") or False)
    quantised = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if method not in METHODS:
        raise ConfigError(f"unknown peft.method '{method}' (expected one of {', '.join(METHODS)})")
    if quantised and method not in ("lora", "dora"):
        raise ConfigError(f"peft.method={method} cannot train quantised weights; use peft=lora, qlora4 or qlora8")
    if method in ("full", "freeze"):
        if method == "full":
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            freeze_all_but_last(model, int(peft_cfg.trainable_layers), _as_list(peft_cfg.get("trainable_modules")))
        _checkpointing(model, checkpointing)
        return model.train()
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantised:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)
    elif checkpointing:
        _checkpointing(model, True)
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    config = _prefix_config(peft_cfg) if method == "ptuning" else _lora_config(peft_cfg)
    model = get_peft_model(model, config)
    # from_pretrained returns eval mode and Lightning (>= 2.2) keeps a module's mode at fit start: without
    # this, LoRA dropout and gradient checkpointing (active only in training mode) would silently be off.
    return model.train()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
