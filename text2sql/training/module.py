"""The LightningModule: next-token loss on the SQL tokens only, AdamW, a warmup + decay schedule.

The loss path runs the decoder, then the LM head and the cross-entropy only at the positions whose next token
is a target (the SQL): prompt positions need hidden states, not vocabulary logits. Gradients are normalised per
target token over the whole accumulated batch (as if it were one batch), not per micro-batch.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from transformers import get_scheduler

from text2sql.data.packing import add_target_positions

_NOT_MODEL_INPUTS = ("labels", "target_positions")


class Text2SQLModule(pl.LightningModule):
    """Wraps a (PEFT) causal LM. Batches carry `labels` with -100 on every prompt token."""

    updates_per_batch = 1  # optimizer steps per training batch (GRPO's num_iterations): the schedule's length

    def __init__(self, model: torch.nn.Module, optim: DictConfig):
        super().__init__()
        self.model = model
        self.optim = optim
        # PEFT runs checkpoint only the trainable weights; the frozen base comes from model.path on resume.
        self.strict_loading = all(p.requires_grad for p in model.parameters())
        self._parts = None  # (decoder, lm_head) once looked up; False: fall back to the full forward
        self._window_targets = None  # target tokens of the micro-batches accumulated since the last step
        self._loss_scale = None  # a fixed token count that keeps the returned loss near a per-token mean
        self._nonfinite = None  # device flag, checked at logging intervals (no per-step host sync)

    def trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights (the adapter) in `state_dict`; optimizer/scheduler/loop state stay."""
        checkpoint["loss_scale"] = self._loss_scale  # a resumed run returns the same loss values
        state = checkpoint.get("state_dict")
        if self.strict_loading or state is None:
            return
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        checkpoint["trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Loading is non-strict for the frozen base, so check that every trainable weight is really there."""
        self._loss_scale = checkpoint.get("loss_scale", self._loss_scale)
        state = checkpoint.get("state_dict")
        if state is None or self.strict_loading:
            return
        missing = sorted(self.trainable_keys() - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable weights of this model (e.g. {missing[0]}); "
                             "was it saved with another peft/model config?")

    def forward(self, **batch):
        return self.model(**batch)

    # -- the loss path --------------------------------------------------------------------------------------
    def _decoder_and_head(self):
        """The decoder (hidden states) and the LM head of the wrapped causal LM, or None if it has no such split."""
        if self._parts is None:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            try:
                decoder, head = base.get_decoder(), base.get_output_embeddings()
            except (AttributeError, ValueError, NotImplementedError):
                decoder, head = None, None
            # prompt learning (peft=ptuning) injects its prefixes in the PEFT model's forward: no decoder shortcut
            prefix = getattr(getattr(self.model, "active_peft_config", None), "is_prompt_learning", False)
            ok = not prefix and decoder is not None and head is not None and decoder is not base
            self._parts = (decoder, head) if ok else False
        return self._parts or None

    def target_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the next-token cross-entropy over target tokens, number of target tokens), computing the LM
        head only at positions whose next token is a target. Packed batches carry position_ids, no mask."""
        labels = batch["labels"]
        positions = batch.get("target_positions")
        if positions is None:  # batches built elsewhere: derive the index here (a host sync on accelerators)
            positions = add_target_positions({"labels": labels})["target_positions"]
        inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
        parts = self._decoder_and_head()
        if parts:
            decoder, head = parts
            hidden = decoder(**inputs, use_cache=False).last_hidden_state
            logits = head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))
        else:
            logits = self.model(**inputs, use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
        # the target of flat position p = row * width + col is labels[row, col + 1] = flat labels[p + 1]
        targets = labels.reshape(-1).index_select(0, positions + 1)
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        return loss_sum, torch.as_tensor(positions.numel(), device=loss_sum.device, dtype=loss_sum.dtype)

    def _owns_gradients(self) -> bool:
        """True where Lightning accumulates plain .grad tensors (not DeepSpeed, which accumulates itself)."""
        return "DeepSpeed" not in type(self.trainer.strategy).__name__

    def _clips_under_mixed_precision(self) -> bool:
        """True where Lightning's MixedPrecision plugin will clip gradients (it rejects fused optimizers there)."""
        from lightning.pytorch.plugins.precision import MixedPrecision

        return bool(self.trainer.gradient_clip_val) and isinstance(self.trainer.precision_plugin, MixedPrecision)

    def training_step(self, batch, batch_idx):
        loss_sum, n_targets = self.target_loss(batch)
        loss = loss_sum / n_targets.clamp(min=1)  # this micro-batch's per-token mean, for logging
        bad = ~torch.isfinite(loss_sum)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        if batch_idx % max(1, self.trainer.log_every_n_steps) == 0:  # a host sync, at logging intervals only
            self._check_finite()
        n = batch["input_ids"].shape[0]
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=False, batch_size=n)
        self.log("train/loss_epoch", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=True)
        if not self._owns_gradients():
            return loss
        # Per target token over the accumulated batch: return the token sum over a fixed count and rescale the
        # accumulated gradients by (that count / the window's real count) in on_before_optimizer_step.
        if self._loss_scale is None:  # once per run; the same on every rank, since DDP averages the gradients
            first = self.trainer.strategy.reduce(n_targets.detach().clone(), reduce_op="mean")
            self._loss_scale = max(1.0, float(first))
        self._window_targets = n_targets if self._window_targets is None else self._window_targets + n_targets
        return loss_sum / self._loss_scale

    def _check_finite(self) -> None:
        if self._nonfinite is not None and bool(self._nonfinite):
            raise FloatingPointError(f"non-finite training loss at or before step {self.global_step}")
        self._nonfinite = None

    def on_train_epoch_end(self) -> None:
        self._check_finite()

    def on_before_optimizer_step(self, optimizer) -> None:
        """Turn the accumulated token sums into a per-target-token mean over the whole accumulated batch."""
        window, self._window_targets = self._window_targets, None
        if window is None or not self._owns_gradients():
            return
        world = self.trainer.world_size
        if world > 1:  # DDP averages gradients over ranks: normalise by the global token count
            window = self.trainer.strategy.reduce(window.detach().clone(), reduce_op="sum")
        # Lightning divided every micro-batch loss by accumulate_grad_batches; DDP divides by world size.
        scale = (self._loss_scale * self.trainer.accumulate_grad_batches * world) / window.clamp(min=1)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale.to(device=p.grad.device, dtype=p.grad.dtype))

    def validation_step(self, batch, batch_idx):
        loss_sum, n_targets = self.target_loss(batch)
        self.log("val/loss", loss_sum / n_targets.clamp(min=1), on_epoch=True, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # One fused kernel instead of a loop over every adapter tensor (what transformers' Trainer uses by default);
        # DeepSpeed wraps the optimizer itself, so it keeps the plain one. Lightning's mixed precision (bf16-mixed,
        # 16-mixed: every GPU preset) refuses to clip gradients of a fused optimizer, so there it is foreach.
        fused = (self._owns_gradients() and not self._clips_under_mixed_precision()
                 and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params))
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],  # DeepSpeed ZeRO drops empty groups, then the scheduler's count is off
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            fused=fused or None,
        )
        total = int(self.trainer.estimated_stepping_batches) * self.updates_per_batch
        warmup = self.optim.warmup_steps if self.optim.warmup_steps is not None else int(self.optim.warmup_ratio * total)
        scheduler = get_scheduler(self.optim.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
