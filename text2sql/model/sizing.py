"""`python train.py ... dry_run=true`: size a run on a laptop, without weights and without a download.

The model is built on PyTorch's meta device from the YAML's `architecture` (shapes only, no memory), wrapped
by the same `apply_peft` a real run uses, and counted: the parameter counts are exact. The GPU memory per
device is an *estimate* made of

- weights: every base parameter in `model.dtype`, or for qlora4 / qlora8 the decoder's linear layers in
  4-bit NF4 (+ quantisation constants) / 8-bit, and the rest (embeddings, head, norms) in fp32 as PEFT's
  k-bit preparation leaves them;
- the trainable parameters' own copy when they are not part of the base (LoRA adapters, fp32 in PEFT);
- gradients and AdamW states of the trainable parameters (DeepSpeed keeps fp32 master weights too);
- ZeRO sharding over `devices x num_nodes` from the hardware preset (stage 1: optimizer states, 2: + gradients,
  3: + weights) and CPU offload of optimizer states / parameters;
- activations, a rough term from batch size, sequence length (source + target budget) and the layer shapes,
  with gradient checkpointing when the peft preset turns it on;
- a fixed allowance for the CUDA context and allocator fragmentation.

It is meant to say whether a run is in the right range for a card (e.g. 13B QLoRA-4 on a 24 GB card: yes;
13B full fine-tuning: no), not to predict the allocator's peak to the last GB.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text2sql.atomic import atomic_path

log = logging.getLogger(__name__)

GIB = 1024 ** 3
CARDS_GIB = (16, 24, 40, 48, 80)
CUDA_CONTEXT_GIB = 1.0
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def _sel(cfg, key, default=None):
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def meta_model(cfg: DictConfig):
    """The base model of `cfg.model.architecture` (its `model_type`: llama, qwen2, mistral) on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from text2sql.model.load import architecture_config

    arch = OmegaConf.to_container(cfg.model.architecture, resolve=True)
    if "vocab_size" not in arch:  # the tiny model's vocab comes from its tokenizer build
        arch["vocab_size"] = int(_sel(cfg, "model.build.vocab_size", 32000))
    config = architecture_config(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model, config


def _quantised_linear_params(model) -> int:
    """Parameters bitsandbytes would quantise: the decoder layers' linear weights (lm_head is skipped)."""
    import torch

    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}")


def count(cfg: DictConfig) -> dict:
    """Exact counts: base total, trainable (adapter or all), adapter, quantisable linear params."""
    from text2sql.model.peft import apply_peft

    model, config = meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    quantisable = _quantised_linear_params(model)
    peft_cfg = OmegaConf.create(OmegaConf.to_container(cfg.peft, resolve=True))
    peft_cfg.gradient_checkpointing = False  # nothing to run on meta
    wrapped = apply_peft(model, peft_cfg)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    with_adapter = sum(p.numel() for p in wrapped.parameters())
    return {"total_params": total, "trainable_params": trainable, "adapter_params": with_adapter - total,
            "quantisable_params": quantisable, "config": config}


def _world(cfg) -> tuple[int, str | None]:
    devices = _sel(cfg, "hardware.devices", 1)
    nodes = int(_sel(cfg, "hardware.num_nodes", 1) or 1)
    note = None
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        per_node = int(devices)
    elif OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        per_node = len(devices)
    else:
        per_node, note = 1, f"hardware.devices={devices}: sized for 1 device per node"
    return max(1, per_node) * max(1, nodes), note


def estimate_memory(cfg: DictConfig, counts: dict) -> dict:
    """GPU memory per device in GiB, by term (see the module docstring). An estimate, not a measurement."""
    config = counts["config"]
    dtype = str(_sel(cfg, "model.dtype", "float32"))
    dtype_b = DTYPE_BYTES.get(dtype, 4)
    method = str(cfg.peft.method)
    quant = _sel(cfg, "peft.quantization", None)
    bits = int(quant.get("bits", 4)) if quant else None
    total, trainable = counts["total_params"], counts["trainable_params"]
    adapter = counts["adapter_params"]
    stage = int(_sel(cfg, "hardware.zero_stage", 0) or 0)
    offload_opt = bool(_sel(cfg, "hardware.offload_optimizer", False))
    offload_par = bool(_sel(cfg, "hardware.offload_parameters", False))
    strategy = str(_sel(cfg, "hardware.strategy._target_", _sel(cfg, "hardware.strategy", "")) or "")
    deepspeed = stage > 0 or "deepspeed" in strategy.lower()
    world, world_note = _world(cfg)
    precision = str(_sel(cfg, "hardware.precision", "32-true"))

    # weights of the base model
    if bits:
        q = counts["quantisable_params"]
        double = bool(quant.get("double_quant", True))
        per_q = (0.5 + (1 / 64 + 4 / (64 * 256) if double else 4 / 64)) if bits == 4 else 1.0 + 4 / config.hidden_size
        weights = q * per_q + (total - q) * 4  # k-bit preparation casts the non-quantised rest to fp32
    else:
        weights = total * dtype_b
    # the trainable parameters: LoRA adapters are fp32 (PEFT autocasts them), full fine-tuning trains the base
    train_b = 4 if method != "full" else dtype_b
    adapter_bytes = adapter * 4
    grads = trainable * train_b
    if deepspeed:
        optimizer = trainable * (8 + (4 if train_b < 4 else 0))  # fp32 Adam moments + fp32 master weights
    else:
        optimizer = trainable * 2 * train_b  # torch AdamW keeps its moments in the parameter dtype
    cpu = 0.0
    if stage >= 1:
        optimizer /= world
    if stage >= 2:
        grads /= world
    if stage >= 3:
        weights /= world
        adapter_bytes /= world
    if offload_opt and stage >= 1:
        cpu += optimizer
        optimizer = 0.0
    if offload_par and stage >= 3:
        cpu += weights
        weights = 0.0

    # activations (rough): per layer and token, the inputs of attention and MLP projections kept for backward
    batch = int(_sel(cfg, "data.batch_size", 1))
    act_b = 2 if "16" in precision else dtype_b
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    seq, tokens, logit_tokens, rollout = _shapes(cfg, config, batch, act_b)
    per_layer = tokens * (10 * h + 4 * inter) * act_b
    checkpointing = bool(_sel(cfg, "peft.gradient_checkpointing", False))
    layer_acts = (layers * tokens * h * act_b + per_layer) if checkpointing else layers * per_layer
    logits = logit_tokens * config.vocab_size * (act_b + 8)  # logits, their fp32 upcast for the loss and its grad
    activations = layer_acts + logits

    terms = {"weights": weights, "adapter": adapter_bytes, "gradients": grads, "optimizer_states": optimizer,
             "activations_estimate": activations, "cuda_context": CUDA_CONTEXT_GIB * GIB}
    if rollout:  # generation and the update do not overlap: the KV cache counts beyond the update's activations
        terms["rollout_kv_cache"] = max(0.0, rollout.pop("kv_cache") - activations)
    per_device = sum(terms.values())
    return {
        "per_device_gib": round(per_device / GIB, 2),
        "terms_gib": {k: round(v / GIB, 3) for k, v in terms.items()},
        "cpu_offload_gib": round(cpu / GIB, 2),
        "fits_gib": {f"{c}": per_device <= c * GIB for c in CARDS_GIB},
        "assumptions": {
            "model_dtype": dtype, "precision": precision, "quantisation": f"{bits}-bit" if bits else None,
            "method": method, "zero_stage": stage, "world_size": world, "offload_optimizer": offload_opt,
            "offload_parameters": offload_par, "deepspeed": deepspeed, "batch_size_per_device": batch,
            "sequence_length": seq, "gradient_checkpointing": checkpointing, "note": world_note,
            **({"grpo": rollout} if rollout else {}),
        },
        "label": "estimate: activations and allocator overhead are rough; weights/optimizer terms are exact sizes",
    }


def _shapes(cfg, config, batch: int, act_b: int) -> tuple[int, int, int, dict | None]:
    """(sequence length, tokens through the layers, tokens through the LM head, objective=grpo's rollout shapes):
    SFT trains on prompt + gold target; GRPO updates on (micro-batch) rows of prompt + completion."""
    seq = int(_sel(cfg, "dataset.max_source_length", 512)) + int(_sel(cfg, "dataset.max_target_length", 128))
    rollout = _rollout(cfg, config, batch, act_b)
    if rollout:
        return rollout["sequence_length"], rollout["update_tokens"], rollout["logit_tokens"], rollout
    return seq, batch * seq, batch * seq, None


def _rollout(cfg, config, batch: int, act_b: int) -> dict | None:
    """objective=grpo's shapes: rows per generate call and per update, and the rollout's KV cache in bytes (keys
    and values of every layer for prompt + completion); None for the SFT objective."""
    n = _sel(cfg, "objective.num_generations")
    if not n:
        return None
    completion = int(_sel(cfg, "objective.max_new_tokens", 128))
    seq = int(_sel(cfg, "dataset.max_source_length", 512)) + completion
    rows = batch * int(n)
    per_call = max(int(n), int(_sel(cfg, "objective.rollout_batch_size", rows)) // int(n) * int(n))
    head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv = min(per_call, rows) * seq * config.num_hidden_layers * 2 * kv_heads * head_dim * act_b
    update = int(_sel(cfg, "objective.micro_batch_rows") or rows)
    return {"rollout_rows": rows, "rows_per_generate": min(per_call, rows), "update_rows": update,
            "completion_length": completion, "sequence_length": seq, "kv_cache": kv,
            "update_tokens": update * seq, "logit_tokens": update * completion}


def dry_run(cfg: DictConfig, out_dir: str | os.PathLike) -> dict:
    """Count and size the configured run, print a table, write `out_dir/dry_run.json`; loads nothing."""
    counts = count(cfg)
    memory = estimate_memory(cfg, counts)
    config = counts.pop("config")
    record = {
        "model": str(cfg.model.name),
        "peft": str(cfg.peft.method) + (f"+{cfg.peft.quantization.bits}bit" if _sel(cfg, "peft.quantization") else ""),
        "hardware": str(_sel(cfg, "hardware.name", "") or ""),
        "total_params": counts["total_params"],
        "trainable_params": counts["trainable_params"],
        "adapter_params": counts["adapter_params"],
        "trainable_percent": round(100 * counts["trainable_params"] / counts["total_params"], 4),
        "architecture": {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                         "num_hidden_layers", "num_attention_heads",
                                                         "num_key_value_heads")},
        "memory": memory,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "dry_run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _print(record, out / "dry_run.json")
    return record


def _print(record: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    mem = record["memory"]
    table = Table(title=f"dry run: {record['model']} / {record['peft']} (no weights loaded)")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("total params", f"{record['total_params']:,}")
    table.add_row("trainable params", f"{record['trainable_params']:,} ({record['trainable_percent']}%)")
    a = mem["assumptions"]
    table.add_row("devices x ZeRO stage", f"{a['world_size']} x {a['zero_stage']}")
    for k, v in mem["terms_gib"].items():
        table.add_row(f"  {k.replace('_', ' ')}", f"{v:.2f} GiB")
    table.add_row("GPU memory per device (estimate)", f"{mem['per_device_gib']:.2f} GiB")
    if mem["cpu_offload_gib"]:
        table.add_row("offloaded to CPU RAM", f"{mem['cpu_offload_gib']:.2f} GiB")
    table.add_row("fits", ", ".join(f"{c} GiB: {'yes' if ok else 'no'}" for c, ok in mem["fits_gib"].items()))
    console = Console()
    console.print(table)
    console.print(f"wrote {path}")
