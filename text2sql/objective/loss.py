"""The GRPO loss on tensors: group-normalised advantages, the clipped importance ratio, an optional KL penalty to
the reference, and the token normalisation `loss_type` names.

The formulas are TRL 1.16's (`trl/trainer/grpo_trainer.py`: advantages in `_generate_and_score_completions`, the
loss in `_compute_loss`, token-level importance sampling, no entropy bonus or masks), so a run here and a run of
TRL's `GRPOTrainer` optimise the same number (tests/test_grpo.py checks it against TRL itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """Each sample's reward minus its group's mean, divided by the group's std (`group`), the batch's std
    (`batch`) or nothing (`none`: Dr. GRPO). Rows are grouped by prompt: the first `num_generations` rows are
    prompt 0's. A group whose samples all got the same reward has advantage 0 (no signal)."""
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALES)}, got {scale!r}")
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(num_generations)  # unbiased, as TRL's nanstd
    elif scale == "batch":
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        return advantages
    return advantages / (std + 1e-4)


def no_signal_share(rewards: torch.Tensor, num_generations: int) -> float:
    """The share of groups whose samples all got the same reward: they teach nothing."""
    grouped = rewards.view(-1, num_generations)
    return float((grouped == grouped[:, :1]).all(dim=1).float().mean())


@dataclass
class LossOutput:
    loss: torch.Tensor          # what to backpropagate
    kl: float | None            # mean per-token KL to the reference (None when beta == 0)
    clip_fraction: float        # share of completion tokens whose ratio was clipped (region, as TRL's)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor, *,
              loss_type: str = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, max_completion_length: int | None = None,
              num_items: float | None = None, kl_bias_correction: bool = True) -> LossOutput:
    """The loss of one batch of completions (rows: samples, columns: completion tokens).

    `logps`: this policy's per-token log-probs (with grad); `old_logps`: the policy's that sampled them (None: the
    same, detached, i.e. `num_iterations == 1`); `advantages`: one per row; `mask`: 1 on completion tokens.
    `dr_grpo` divides by rows x `max_completion_length`; `dapo` by `num_items`, the completion tokens of the whole
    generation batch over all ranks divided by the rank count (default: this batch's tokens).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        if kl_bias_correction:
            per_token_kl = per_token_kl * ratio
        per_token = per_token + beta * per_token_kl
        kl = float((per_token_kl.detach() * mask).sum() / mask.sum().clamp(min=1.0))
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        width = max_completion_length if max_completion_length is not None else per_token.size(1)
        loss = (per_token * mask).sum() / (per_token.size(0) * width)
    else:  # dapo
        items = torch.as_tensor(num_items if num_items is not None else mask.sum(), dtype=per_token.dtype)
        loss = (per_token * mask).sum() / items.clamp(min=1.0)
    region = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    clip_fraction = float((region.float() * mask).sum() / mask.sum().clamp(min=1.0))
    return LossOutput(loss, kl, clip_fraction)
