"""Packing several examples into one row, and the target index the loss path gathers with.

`pack_batch` places the examples of one batch (first-fit decreasing) into rows no wider than the longest
example, so a batch of mixed lengths becomes fewer, fuller rows. Each example gets `position_ids` that restart
at 0 and no `attention_mask` is sent: transformers then reads the packed layout from the position ids and masks
attention per example (SDPA/eager build a block-diagonal causal mask, flash-attention uses varlen kernels), so no
example attends to another. The sampler and the number of examples per step are untouched.

`add_target_positions` lists, on the host, the flat positions whose next token is a target; the module gathers
hidden states there and runs the LM head only on them, without a data-dependent (host-syncing) mask on device.
"""

from __future__ import annotations

import torch

from text2sql.data.prompt import IGNORE_INDEX



def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: lists of item indices whose lengths sum to at most `capacity` (longest first)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


def pack_batch(items: list[dict], pad_token_id: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """`items` ({input_ids, labels}) packed into rows of at most max(width, longest item) tokens.

    Returns input_ids, labels and position_ids (no attention_mask, see the module docstring). The first token
    of every example is never a target, so no position predicts across an example boundary; the padding tail of
    a row is a segment of its own with ignored labels.
    """
    lengths = [len(it["input_ids"]) for it in items]
    rows = pack_rows(lengths, max(max(lengths), width or 0))
    cols = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), cols), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), cols), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), cols), dtype=torch.long)
    for r, row in enumerate(rows):
        pos = 0
        for i in row:
            n = lengths[i]
            input_ids[r, pos:pos + n] = torch.tensor(items[i]["input_ids"])
            labels[r, pos:pos + n] = torch.tensor(items[i]["labels"])
            labels[r, pos] = IGNORE_INDEX
            position_ids[r, pos:pos + n] = torch.arange(n)
            pos += n
        position_ids[r, pos:] = torch.arange(cols - pos)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def add_target_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add `target_positions`: flat indices (over batch x width) of the positions whose next token is a target."""
    labels = batch["labels"]
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    batch["target_positions"] = (nxt.reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)
    return batch


def padding_share(batch: dict[str, torch.Tensor], pad_token_id: int) -> tuple[int, int]:
    """(real tokens, slots) of a batch: what padding (or a packed row's tail) costs."""
    ids = batch["input_ids"]
    if "attention_mask" in batch:
        real = int(batch["attention_mask"].sum())
    else:
        real = int((ids != pad_token_id).sum())
    return real, ids.numel()
