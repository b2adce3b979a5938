"""A callback that keeps one row of metrics per epoch for metrics.json, written after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl

from text2sql.eval.callback import MONITOR, is_eval_epoch
from text2sql.job.run_dir import RunDir


def _is_eval_metric(name: str) -> bool:
    """The metrics the execution-accuracy callback logs (only on the epochs it evaluates)."""
    return name == MONITOR or name.startswith(("val/ex_", "val/status/"))


class EpochHistory(pl.Callback):
    """Appends {"epoch", "train/loss", "val/..."} to `history` at the end of every training epoch.

    With `out_dir`, metrics.json (status "running") is rewritten after each epoch, so a killed run keeps the
    epochs it finished and its resumed process continues the same history. A re-run epoch replaces its row.
    """

    def __init__(self, history: list[dict], out_dir: str | Path | None = None,
                 metric: str = "val/execution_accuracy", eval_every_n_epochs: int = 1, throughput=None):
        self.throughput = throughput  # (trainer, pl_module) -> {"perf/tokens_per_s": ...}: TrainingProgress's
        self.history, self.metric, self.eval_every_n_epochs = history, metric, max(eval_every_n_epochs, 1)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.start = time.time()
        if history and self.out_dir is not None:  # resumed: the earlier processes' time counts too
            self.start -= RunDir(self.out_dir).wall_time()

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": trainer.current_epoch}
        evaluated = is_eval_epoch(trainer.current_epoch, self.eval_every_n_epochs)
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            if not evaluated and _is_eval_metric(name):
                continue  # a stale value of the last evaluated epoch (Lightning keeps it in callback_metrics)
            if name == "train/loss_epoch":
                row["train/loss"] = value
            elif name.startswith("val/") or name == "train/loss_step":
                row[name] = value
        row.pop("train/loss_step", None)
        if self.throughput is not None:
            row.update(self.throughput(trainer, pl_module))
        self.history[:] = [r for r in self.history if r.get("epoch", -1) < row["epoch"]] + [row]
        if self.out_dir is not None and trainer.is_global_zero:
            RunDir(self.out_dir).write_metrics(self.history, self.metric, "running", None, time.time() - self.start)
