"""A callback that keeps one row of metrics per epoch for metrics.json, written after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl


class EpochHistory(pl.Callback):
    """Appends {"epoch", "train/loss", "val/..."} to `history` at the end of every training epoch.

    With `out_dir`, metrics.json (status "running") is rewritten after each epoch, so a killed run keeps the
    epochs it finished and its resumed process continues the same history. A re-run epoch replaces its row.
    """

    def __init__(self, history: list[dict], out_dir: str | Path | None = None,
                 metric: str = "val/execution_accuracy"):
        self.history, self.metric = history, metric
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.start = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": trainer.current_epoch}
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            if name == "train/loss_epoch":
                row["train/loss"] = value
            elif name.startswith("val/") or name == "train/loss_step":
                row[name] = value
        row.pop("train/loss_step", None)
        self.history[:] = [r for r in self.history if r.get("epoch", -1) < row["epoch"]] + [row]
        if self.out_dir is not None and trainer.is_global_zero:
            from text2sql.run import write_metrics

            write_metrics(self.out_dir, self.history, self.metric, "running", None, time.time() - self.start)
