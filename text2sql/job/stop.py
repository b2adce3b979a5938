"""Ctrl-C (SIGINT) and SIGTERM (a SLURM preemption, `kill`) are states of a run, not crashes.

The first signal asks the run to stop at the next safe point: right after an optimizer step (the checkpoint
written there is a mid-epoch one, which `ExactResume` resumes exactly), or at the start of an epoch (the last
epoch's checkpoint is already written). Evaluation in progress finishes first. metrics.json then says
`"status": "interrupted"` (SIGINT) or `"preempted"` (SIGTERM) with the step, and one line gives the resume
command. A second signal stops at once, from the last checkpoint. Before training starts (loading a model),
the first signal stops at once: there is nothing to save yet.

Lightning's own SIGTERM handling (`trainer.received_sigterm`, `SIGTERMException`) is replaced while training
runs: it raises in the middle of validation and leaves no checkpoint of the current step.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger(__name__)

STATUS = {signal.SIGINT: "interrupted", signal.SIGTERM: "preempted"}
EXIT_CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as a shell reports it


class RunStopped(BaseException):
    """Raised to end `fit` on a signal. A BaseException: nothing between the loop and `run_job` swallows it."""

    def __init__(self, signum: int, step: int | None, saved: bool):
        super().__init__(f"{STATUS[signum]} at step {step}")
        self.signum, self.step, self.saved = signum, step, saved

    @property
    def status(self) -> str:
        return STATUS[self.signum]


class _Request:
    """The signal received (if any) and whether a `StopOnSignal` callback is there to act on it."""

    signum: int | None = None
    armed: bool = False
    step: int | None = None  # the global step training had reached, for a stop outside the callback


REQUEST = _Request()


def _handler(signum, frame) -> None:
    if REQUEST.signum is None and REQUEST.armed:
        REQUEST.signum = signum
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s: stopping after the current step with a checkpoint (again: stop now)", what)
        return
    REQUEST.signum = REQUEST.signum or signum
    raise RunStopped(REQUEST.signum, REQUEST.step, saved=False)


@contextlib.contextmanager
def stop_on_signals():
    """Around one training job: SIGINT and SIGTERM raise `RunStopped` (at once, or via `StopOnSignal`)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers need the main thread
        yield
        return
    REQUEST.signum, REQUEST.armed, REQUEST.step = None, False, None
    previous = {s: signal.getsignal(s) for s in STATUS}
    for s in STATUS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        REQUEST.armed = False


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
