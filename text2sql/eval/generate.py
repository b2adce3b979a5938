"""Batched greedy generation and SQL extraction: one code path for the per-epoch callback and `predict`.

Prompts are sorted by length and left-padded per batch, decoded greedily with the KV cache until EOS or
`max_new_tokens`; the continuation is cut to one single-line SQL statement (DB-GPT-Hub's pred.sql format).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager

import torch


_FENCE = re.compile(r"```(?:sql)?\s*(.*?)(?:```|$)", re.S | re.I)


def extract_sql(text: str) -> str:
    """The first SQL statement in a model continuation, on one line (empty string when there is none)."""
    text = text.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    for stop in ("</s>", "<|im_end|>", "[INST]", "###"):
        text = text.split(stop, 1)[0]
    text = text.split(";", 1)[0]
    return " ".join(text.split())


@contextmanager
def eval_mode(model):
    """The model in eval mode for generation, back in training mode after it when it was training (the EX callback
    generates in the middle of fit)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def left_pad(sources: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with left padding: every prompt ends at the same position."""
    width = max(len(s) for s in sources)
    input_ids = torch.full((len(sources), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sources), width), dtype=torch.long)
    for row, ids in enumerate(sources):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids))
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def prefix_length(model) -> int:
    """Virtual tokens of a PEFT prompt-learning model (peft=ptuning), else 0."""
    config = getattr(model, "active_peft_config", None)
    return int(config.num_virtual_tokens) if getattr(config, "is_prompt_learning", False) else 0


def _greedy_with_prefix(model, input_ids, attention, max_new_tokens: int, eos_id, pad_id):
    """Greedy decoding through the PEFT forward, which applies the trained prefixes. Needed because PEFT 0.21's
    `generate` under transformers 5 drops them (measured: the output equals the base model's). No KV cache: one
    forward per new token; positions count from the first real token, as the training forward counts them."""
    done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=False).logits
        nxt = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits[:, -1].argmax(-1))
        input_ids = torch.cat([input_ids, nxt[:, None]], 1)
        attention = torch.cat([attention, (~done).long()[:, None]], 1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return input_ids


@torch.no_grad()
def generate_sql(
    model,
    tokenizer,
    sources: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    progress=None,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy continuations of `sources` (token id lists), returned as extracted SQL in input order.

    `progress`, if given, is called with the number of examples finished after each batch. `synced_gpus`: keep
    running forward passes until every rank's batch is done (weights sharded over ranks: ZeRO-3); then every rank
    must call this with the same number of batches.
    """
    if synced_gpus and prefix_length(model):
        raise ValueError("peft=ptuning generates without model.generate, which ZeRO-3's lock-step needs; "
                         "use hardware=gpu or deepspeed_zero2")
    device = next(p for p in model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    out: list[str] = [""] * len(sources)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            input_ids, attention = left_pad([sources[i] for i in idx], pad_id)
            width = input_ids.shape[1]
            if prefix_length(model):
                generated = _greedy_with_prefix(model, input_ids.to(device), attention.to(device), max_new_tokens,
                                                eos_id, pad_id)
            else:
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                    synced_gpus=synced_gpus,
                )
            new_tokens = generated[:, width:]
            for row, i in enumerate(idx):
                out[i] = extract_sql(tokenizer.decode(new_tokens[row], skip_special_tokens=True))
            if progress is not None:
                progress(len(idx))
    return out
