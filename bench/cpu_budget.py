"""A training budget in CPU seconds, for benchmarks that compare two objectives "for the same time" on a box other
jobs may share: wall time then depends on the neighbours, the CPU time the training process used does not (its
threads wait passively, OMP_WAIT_POLICY / GOMP_SPINCOUNT, so waiting is not counted as work). bench/grpo.py adds it
to a run as `+callbacks.cpu_budget._target_=cpu_budget.CpuBudget +callbacks.cpu_budget.seconds=S` with bench/ on
PYTHONPATH. Evaluator worker processes (the reward's SQL execution) are not counted: a few ms per step here."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class CpuBudget(Callback):
    """Stops the fit after the batch at which this process's CPU time since the first training batch reaches
    `seconds` (all threads; `time.process_time`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        used = time.process_time() - self.start
        pl_module.log("perf/cpu_s", used, on_step=True, on_epoch=False, batch_size=1)
        if used >= self.seconds:
            trainer.should_stop = True
