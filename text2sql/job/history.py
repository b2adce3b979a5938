"""The one record of a run's epochs: `EpochLog`, the single owner of what metrics.json, the W&B artifacts, the
checkpoint ranking and the EX line read.

`run_job` creates it (with the run dir and the optimised metric) and hands it to `train`, which restores it on a
resume and passes it to the callbacks that need it (those whose YAML has `record: null`). The EX callback hands
it each scored epoch (`add_score`, on every rank; the `EpochScore` with its rows on rank 0 only); `close_epoch`
itself closes each epoch's row at the end of the training epoch (loss, val loss, throughput and that epoch's
scores) and rewrites metrics.json (status "running"), so a killed run keeps the epochs it finished and its
resumed process continues the same history (`job/record_callback.py::RecordEpochs` calls `close_epoch`: the
record itself imports no Lightning, so the checks before it fail before torch loads). Readers subscribe (`subscribe`)
to hear of each closed epoch.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from text2sql.job.run_dir import RunDir, best_row

log = logging.getLogger(__name__)


class EpochLog:
    """Per-epoch rows {"epoch", "train/loss", "val/...", "perf/..."}, the baseline (epoch -1), and the wall time.

    `run`: the run dir (None: nothing is written); `metric`: the optimised metric, which picks the best epoch;
    `rank0`: whether this process writes (several ranks share one run dir); `throughput`: (trainer, pl_module) ->
    {"perf/...": ...} added to each row (TrainingProgress's).
    """

    def __init__(self, run: RunDir | None, metric: str = "val/execution_accuracy", rank0: bool = True,
                 throughput: Callable | None = None):
        self.run, self.metric, self.rank0, self.throughput = run, metric, rank0, throughput
        self.rows: list[dict] = []  # closed epochs, in order (a re-run epoch replaces its row)
        self.baseline: dict | None = None
        self.start = time.time()
        self._scores: dict[int, dict] = {}  # epoch -> the metrics the EX callback scored (every rank)
        self._pending: dict[int, object] = {}  # epoch -> its EpochScore until the epoch closes (rank 0)
        self._listeners: list[Callable] = []

    # -- a resumed run ----------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue the run dir's record: its earlier epochs, its baseline, and its wall time so far."""
        if self.run is None:
            return
        self.rows = self.run.history()
        self.baseline = self.run.baseline()
        self.start = time.time() - self.run.wall_time()

    # -- what the EX callback hands in ------------------------------------------------------------------------
    def add_score(self, epoch: int, metrics: dict[str, float], score=None, questions=None) -> None:
        """Record epoch `epoch`'s scores (-1: before training). `score` (rank 0): the `EpochScore`, whose rows are
        written to predictions/ now and handed to the subscribers when the epoch closes. `questions`: the dev split
        files whose scored entries go beside the gold file (BIRD: `evaluate --questions` re-scores per difficulty)."""
        self._scores[epoch] = dict(metrics)
        if score is not None and self.run is not None and self.rank0:
            self.run.write_predictions(epoch, score.rows, questions)
        if epoch < 0:  # the baseline is a whole epoch row at once
            self.baseline = {"epoch": epoch, **metrics}
            self.save("running")
            self._tell(self.baseline, score)
        elif score is not None:
            self._pending[epoch] = score

    def evaluated(self, epoch: int) -> bool:
        """Whether epoch `epoch` was scored: its scores are fresh (Lightning keeps the last logged value of a
        metric in `callback_metrics` on the epochs in between, eval.every_n_epochs > 1)."""
        return epoch in self._scores

    def last_scored(self, before: int) -> dict | None:
        """The last row before epoch `before` that holds the metric (the baseline counts): what a new score is
        compared with."""
        rows = ([self.baseline] if self.baseline else []) + self.rows + [
            {"epoch": e, **m} for e, m in self._scores.items()]
        scored = [r for r in rows if r.get("epoch", -1) < before and self.metric in r]
        return max(scored, key=lambda r: r["epoch"]) if scored else None

    # -- readers ----------------------------------------------------------------------------------------------
    def best(self, metric: str | None = None) -> dict | None:
        """The best epoch's row (the first of equal ones, as ModelCheckpoint keeps it)."""
        return best_row(self.rows, metric or self.metric)

    def subscribe(self, listener: Callable) -> None:
        """`listener(row, score)` is called on every rank after each epoch closes (the baseline included); `score`
        is that epoch's `EpochScore` on rank 0 when it was scored, else None."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def _tell(self, row: dict, score) -> None:
        for listener in self._listeners:
            listener(row, score)

    # -- closing an epoch -------------------------------------------------------------------------------------
    def close_epoch(self, trainer, pl_module) -> None:
        """At the end of each training epoch (`job/record_callback.py::RecordEpochs`): the epoch's row."""
        epoch = trainer.current_epoch
        scored = self._scores.get(epoch, {})
        row = {"epoch": epoch}
        for name, value in trainer.callback_metrics.items():
            if name in scored or self._is_score(name):
                if name in scored:
                    row[name] = scored[name]  # the scored value itself (the logged one is float32)
            elif name == "train/loss_epoch":
                row["train/loss"] = float(value)
            elif name.startswith("val/"):
                row[name] = float(value)
        row.update({k: v for k, v in scored.items() if k not in row})
        if self.throughput is not None:
            row.update(self.throughput(trainer, pl_module))
        self.rows = [r for r in self.rows if r.get("epoch", -1) < epoch] + [row]
        self.save("running")
        self._tell(row, self._pending.pop(epoch, None))

    def _is_score(self, name: str) -> bool:
        """A metric the EX callback logs (on the epochs it scores only): a stale value on the other epochs."""
        return any(name in m for m in self._scores.values())

    # -- metrics.json -----------------------------------------------------------------------------------------
    def save(self, status: str, error: str | None = None, step: int | None = None) -> dict:
        """Write metrics.json (rank 0) and return its record; the one place it is written from."""
        run = self.run or RunDir(".")
        return run.write_metrics(self.rows, self.metric, status, error, time.time() - self.start, self.baseline,
                                 step, write=self.rank0 and self.run is not None)
