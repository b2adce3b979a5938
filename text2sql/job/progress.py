"""Training progress for logs that are files (SLURM, nohup, `> log`), and the throughput of every epoch.

Rich's bar draws nothing when stdout is not a terminal, so such a log showed no step, loss or rate for a whole
epoch. `TrainingProgress` then logs one line every `every_s` seconds (to stdout and train.log, through the
logging handlers); on a terminal the bar stays. Every epoch it also measures training throughput (tokens/s,
s/step over the training batches only, peak memory) for the history row and the loggers.
"""

from __future__ import annotations

import logging
import resource
import sys
import time

import lightning.pytorch as pl
import torch

log = logging.getLogger("text2sql.progress")

THROUGHPUT = ("perf/tokens_per_s", "perf/s_per_step", "perf/peak_memory_gb")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _tokens(batch) -> int:
    if isinstance(batch, list):  # a batch of prompts (objective=grpo): their tokens
        return sum(len(b["input_ids"]) for b in batch if isinstance(b, dict) and "input_ids" in b)
    if isinstance(batch, dict) and "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel()) if isinstance(batch, dict) else 0


def _peak_memory_gb(device: torch.device) -> float:
    """The epoch's peak allocated GPU memory, or this process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class TrainingProgress(pl.Callback):
    """Plain progress lines when stdout is not a terminal (`plain`: None = decide by `isatty`), and throughput."""

    def __init__(self, every_s: float | None = 30.0, plain: bool | None = None):
        self.every_s = every_s
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._epoch: dict = {}
        self._run_start = self._last_line = 0.0
        self._batches_run = 0
        self._loss: float | None = None

    def _active(self, trainer) -> bool:
        return self.plain and bool(self.every_s) and trainer.is_global_zero

    def on_train_start(self, trainer, pl_module) -> None:
        self._run_start = self._last_line = time.monotonic()
        self._batches_run = 0
        self.on_train_epoch_start(trainer, pl_module)  # a mid-epoch resume starts without this hook

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = {"tokens": 0, "seconds": 0.0, "steps_start": trainer.global_step}
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        self._epoch["tokens"] += _tokens(batch)
        self._epoch["seconds"] += now - self._batch_start
        self._batches_run += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # this batch's (callback_metrics lag)
        self._loss = float(loss) if loss is not None else self._loss
        if self._active(trainer) and now - self._last_line >= self.every_s:
            self._last_line = now
            log.info("%s", self.line(trainer, batch_idx + 1, now))

    def line(self, trainer, batch: int, now: float) -> str:
        """`epoch 1 of 8 batch 40/375 step 415/3000 loss 0.912 1,234 tok/s ETA 12m05s` (ETA counts evaluation too)."""
        per_epoch = trainer.num_training_batches
        total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        done = trainer.current_epoch * per_epoch + batch
        rate = self._epoch["tokens"] / self._epoch["seconds"] if self._epoch["seconds"] else 0.0
        eta = ""
        if total is not None and self._batches_run:
            per_batch = (now - self._run_start) / self._batches_run
            eta = f" ETA {_duration(per_batch * (total - done))}"
        steps = trainer.estimated_stepping_batches
        loss = f" loss {self._loss:.4f}" if self._loss is not None else ""
        return (f"epoch {trainer.current_epoch} of {trainer.max_epochs} batch {batch}/{per_epoch} "
                f"step {trainer.global_step}/{steps}{loss} {rate:,.0f} tok/s{eta}")

    def epoch_throughput(self, trainer, pl_module) -> dict[str, float]:
        """This epoch's training throughput (evaluation excluded), for the history row and the loggers."""
        seconds, steps = self._epoch.get("seconds", 0.0), trainer.global_step - self._epoch.get("steps_start", 0)
        if not seconds:
            return {}
        return {"perf/tokens_per_s": round(self._epoch["tokens"] / seconds, 1),
                "perf/s_per_step": round(seconds / max(steps, 1), 4),
                "perf/peak_memory_gb": round(_peak_memory_gb(pl_module.device), 3)}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        perf = self.epoch_throughput(trainer, pl_module)
        if perf and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(perf, step=trainer.global_step)
