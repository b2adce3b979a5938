"""The LightningModule: next-token loss on the SQL tokens only, AdamW, a warmup + decay schedule."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from transformers import get_scheduler


class Text2SQLModule(pl.LightningModule):
    """Wraps a (PEFT) causal LM. Batches carry `labels` with -100 on every prompt token."""

    def __init__(self, model: torch.nn.Module, optim: DictConfig):
        super().__init__()
        self.model = model
        self.optim = optim
        # PEFT runs checkpoint only the trainable weights; the frozen base comes from model.path on resume.
        self.strict_loading = all(p.requires_grad for p in model.parameters())

    def trainable_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable weights (the adapter) in `state_dict`; optimizer/scheduler/loop state stay."""
        state = checkpoint.get("state_dict")
        if self.strict_loading or state is None:
            return
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep}
        checkpoint["trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Loading is non-strict for the frozen base, so check that every trainable weight is really there."""
        state = checkpoint.get("state_dict")
        if state is None or self.strict_loading:
            return
        missing = sorted(self.trainable_keys() - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable weights of this model (e.g. {missing[0]}); "
                             "was it saved with another peft/model config?")

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) at step {self.global_step}")
        n = batch["input_ids"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        # epoch aggregates are averaged over ranks (each rank saw its shard); the per-step value stays local
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0],
                 sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],  # DeepSpeed ZeRO drops empty groups, then the scheduler's count is off
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.optim.warmup_steps if self.optim.warmup_steps is not None else int(self.optim.warmup_ratio * total)
        scheduler = get_scheduler(self.optim.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
