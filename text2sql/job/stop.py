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
import os
import signal
import sys
import threading

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
        _say(f"{what}: stopping after the current step with a checkpoint (again: stop now)")
        return
    REQUEST.signum = REQUEST.signum or signum
    raise RunStopped(REQUEST.signum, REQUEST.step, saved=False)


def _say(line: str) -> None:
    """One line to stderr from a signal handler: straight to the file descriptor, not through `logging`. The
    signal may arrive while the main thread is inside a log handler's write or flush (the progress line to
    train.log); logging again there raises "reentrant call inside BufferedWriter" and prints a traceback."""
    try:
        os.write(sys.stderr.fileno(), f"\n{line}\n".encode())
    except (OSError, ValueError, AttributeError):  # no usable stderr (closed, replaced by an object without a fd)
        pass


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
