"""The Lightning side of `text2sql.job.stop`: the callback that stops training at a safe point on a signal.

Kept apart from `stop` so that the run's lifecycle (which installs the signal handlers before any config check)
imports no torch or Lightning.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning.pytorch as pl

from text2sql.job.stop import REQUEST, STATUS, RunStopped, _handler

log = logging.getLogger(__name__)


class StopOnSignal(pl.Callback):
    """Acts on a signal `stop_on_signals` received, at the next safe point of training (see module docstring)."""

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = Path(checkpoint)
        self._previous: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in STATUS}
            for s in STATUS:  # replaces Lightning's SIGTERM handler, registered just before this hook
                signal.signal(s, _handler)
        REQUEST.armed, REQUEST.step = True, trainer.global_step

    def _disarm(self) -> None:
        REQUEST.armed = False
        for s, handler in self._previous.items():  # what was there (under `stop_on_signals`: its handler)
            signal.signal(s, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._disarm()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._disarm()

    def _requested(self, trainer) -> int | None:
        signum = REQUEST.signum
        if trainer.world_size > 1:  # every rank stops at the same step (a signal may reach only some ranks)
            any_rank = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
            signum = signum or (signal.SIGTERM if any_rank else None)
        return signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        REQUEST.step = trainer.global_step
        if trainer.fit_loop.epoch_loop._should_accumulate():  # mid-accumulation: gradients would be lost
            return
        signum = self._requested(trainer)
        if signum is not None:
            trainer.save_checkpoint(self.checkpoint)  # what ModelCheckpoint(every_n_train_steps) does here
            # What the loop does right after this hook: this step's loss reaches the loggers (W&B has no gap).
            # Private API of lightning 2.6.6 (pyproject caps lightning below 2.7).
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
            raise RunStopped(signum, trainer.global_step, saved=True)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        signum = self._requested(trainer)
        if signum is not None and trainer.current_epoch > 0:  # the previous epoch's checkpoint is the state
            raise RunStopped(signum, trainer.global_step, saved=True)
