"""A callback that keeps one row of metrics per epoch for metrics.json."""

from __future__ import annotations

import lightning.pytorch as pl


class EpochHistory(pl.Callback):
    """Appends {"epoch", "train/loss", "val/..."} to `history` at the end of every training epoch."""

    def __init__(self, history: list[dict]):
        self.history = history

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": trainer.current_epoch}
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            if name == "train/loss_epoch":
                row["train/loss"] = value
            elif name.startswith("val/") or name == "train/loss_step":
                row[name] = value
        row.pop("train/loss_step", None)
        self.history.append(row)
