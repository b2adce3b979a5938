"""The Lightning side of the run's record: closes each training epoch's row in `job/history.py::EpochLog`.

Kept apart so that the record itself imports no Lightning: `run_job` makes it before the run's first checks, which
must fail before torch loads (a bad path, a bad value: one line in about a second).
"""

from __future__ import annotations

import lightning.pytorch as pl


class RecordEpochs(pl.Callback):
    def __init__(self, record):
        self.record = record

    def on_train_epoch_end(self, trainer, pl_module):
        self.record.close_epoch(trainer, pl_module)
