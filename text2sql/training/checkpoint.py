"""Export the trained model at the end of training in Hugging Face format, next to the Lightning checkpoints.

PEFT runs write `<run dir>/adapter/` (adapter_config.json + adapter_model.safetensors + the tokenizer), loadable
with `PeftModel.from_pretrained(base, dir)` and by `text2sql merge`; `peft=full` writes the whole model to
`<run dir>/model/` (loadable with `AutoModelForCausalLM.from_pretrained`). Lightning checkpoints (for resuming)
are trimmed to the trainable weights by `Text2SQLModule.on_save_checkpoint`; DeepSpeed checkpoints by
`exclude_frozen_parameters` (see text2sql.training.strategy).

Also what makes checkpoints safe to resume from: `AtomicCheckpointIO` (temp file + rename), `EvalCheckpoint` /
`EvalEarlyStopping` (EX computed only on the epochs the run's record says were scored; last.ckpt every epoch) and
`ExactResume` (per-batch random streams and the epoch's loss sums, so with the datamodule's resumable loader a
resumed run equals an uninterrupted one).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from text2sql.errors import CheckpointWriteError

log = logging.getLogger(__name__)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _gathered(trainer: pl.Trainer, params):
    """Under DeepSpeed ZeRO-3 the parameters are shards: gather them for the duration of the save."""
    strategy = trainer.strategy
    if getattr(strategy, "zero_stage_3", False):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
    return contextlib.nullcontext()


def export_pretrained(trainer: pl.Trainer, model, out_dir: Path, tokenizer=None) -> Path | None:
    """save_pretrained the adapter (PEFT) or the whole model (full) into out_dir on rank 0; returns the dir."""
    peft = is_peft_model(model)
    params = [p for p in model.parameters() if p.requires_grad] if peft else list(model.parameters())
    with _gathered(trainer, params):
        if trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
    trainer.strategy.barrier("export_pretrained")
    return out_dir if trainer.is_global_zero else None


class ExportPretrained(pl.Callback):
    """At the end of `fit`: `<output_dir>/adapter/` for PEFT runs, `<output_dir>/model/` for full fine-tuning."""

    def __init__(self, output_dir: str, adapter_subdir: str = "adapter", model_subdir: str = "model"):
        self.output_dir = Path(output_dir)
        self.adapter_subdir, self.model_subdir = adapter_subdir, model_subdir
        self.saved_to: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        sub = self.adapter_subdir if is_peft_model(model) else self.model_subdir
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        self.saved_to = export_pretrained(trainer, model, self.output_dir / sub, tokenizer)
        if self.saved_to is not None:
            log.info("saved the trained %s to %s", "adapter" if sub == self.adapter_subdir else "model", self.saved_to)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<name>.tmp` beside the target, fsyncs, then renames over it.

    A kill or a full disk during a save leaves the previous `last.ckpt` whole (Lightning's own writer opens the
    target itself, so an interrupted save leaves a truncated, unloadable file).
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):  # remote filesystems: fsspec has no rename-over; keep Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # not text2sql.atomic: one fixed temp name, so the next save replaces what a killed one left (a checkpoint is
        # large), and an open file, so torch.save's failed write surfaces as the OSError (its own path writer hides it)
        tmp = path.with_name(f".{path.name}.tmp")  # not *.ckpt: never taken for a checkpoint
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            cause = _os_error(err)  # torch.save wraps a failed write in a RuntimeError from its zip writer
            if cause is None:
                raise
            raise CheckpointWriteError(cause.errno, f"could not write checkpoint {path} ({cause.strerror or cause}); "
                                       "the previous checkpoint is kept") from err


def _os_error(err: BaseException | None) -> OSError | None:
    for _ in range(5):
        if err is None or isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _evaluated(trainer, monitor: str | None, record) -> bool:
    """Whether `monitor` was computed in this epoch: the run's record says whether the epoch was scored
    (Lightning keeps a stale value in callback_metrics); without one, whether the metric is there."""
    return (record is None or record.evaluated(trainer.current_epoch)) and (
        monitor is None or monitor in trainer.callback_metrics)


class EvalCheckpoint(ModelCheckpoint):
    """ModelCheckpoint for a metric computed only on some epochs (EX, `eval.every_n_epochs`).

    `record`: the run's EpochLog (train.py hands it in), which knows the epochs that were scored. On the other
    epochs there is nothing new to rank (the metric is absent, or a stale value from an earlier epoch): the
    best-k step is skipped instead of raising. `last.ckpt` is written after every validation, so a resumed run
    loses at most one epoch.
    """

    def __init__(self, *args, record=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = record

    # Pinned private override (lightning<2.7): no public hook skips only ranking (every_n_epochs excludes steps).
    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.monitor is not None and not (_evaluated(trainer, self.monitor, self.record)
                                             and self.monitor in monitor_candidates):
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_anyway(trainer, at_train_epoch_end=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_anyway(trainer, at_train_epoch_end=True)

    def _save_last_anyway(self, trainer, at_train_epoch_end: bool) -> None:
        """Lightning 2.6 writes last.ckpt only when it wrote a best-k checkpoint; here: after every epoch."""
        # Pinned private calls (lightning<2.7): no public API saves `last` alone with Lightning's own skip rules.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class EvalEarlyStopping(EarlyStopping):
    """EarlyStopping counted in evaluations (epochs with the metric), not in epochs; `patience=None` is off."""

    def __init__(self, monitor: str, patience: int | None = None, mode: str = "max", record=None, **kwargs):
        super().__init__(monitor=monitor, patience=patience if patience is not None else 0, mode=mode, **kwargs)
        self.enabled, self.record = patience is not None, record  # record: the run's EpochLog (scored epochs)

    # Public hooks only: the check runs where Lightning runs it (train epoch end or validation end), and only on
    # epochs that computed the metric.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.enabled and _evaluated(trainer, self.monitor, self.record):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.enabled and _evaluated(trainer, self.monitor, self.record):
            super().on_validation_end(trainer, pl_module)


def _derived_seed(*parts: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _reseed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


class ExactResume(pl.Callback):
    """Makes the random numbers of every training batch a function of (seed, epoch, batch, rank).

    Dropout and a shuffling sampler then draw the same numbers whether the process ran from the start or was
    resumed from a checkpoint, at an epoch end or mid-epoch, whatever consumed random numbers in between
    (model building, evaluation, dataloader iterators). The training loader the datamodule returns is resumable
    on one device (text2sql.data.resumable), so a mid-epoch checkpoint (`every_n_train_steps`) resumes at its
    batch instead of replaying the epoch's first batches. (Several ranks: Lightning's distributed sampler,
    resumed at epoch ends.)
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._epoch_sums: dict | None = None

    # Lightning keeps the epoch means being accumulated (`train/loss_epoch`) out of its checkpoints, so after a
    # mid-epoch resume that epoch's mean would cover only the batches after it. The sums go into the checkpoint
    # and are added back once the first resumed batch has created the metrics again.
    # Pinned private `_results` (lightning<2.7): no public API reads or restores a running on_epoch mean.
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        loop = trainer.fit_loop.epoch_loop
        if not trainer.training or loop.batch_progress.is_last_batch:  # an epoch end: the next epoch starts at 0
            return
        checkpoint["epoch_sums"] = {
            key: (m.value.detach().cpu(), m.cumulated_batch_size.detach().cpu()) for key, m in loop._results.items()
            if m.meta.on_epoch and m.is_tensor and m.meta.is_mean_reduction}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._epoch_sums = checkpoint.get("epoch_sums")

    def _epoch(self, trainer) -> None:
        _reseed(_derived_seed(self.seed, trainer.current_epoch, -1, trainer.global_rank))

    def on_train_start(self, trainer, pl_module) -> None:
        self._epoch(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _reseed(_derived_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._epoch_sums:
            results = trainer.fit_loop.epoch_loop._results  # pinned private, as in on_save_checkpoint
            for key, (value, count) in self._epoch_sums.items():
                if key in results:
                    metric = results[key]
                    metric.value = metric.value + value.to(metric.value.device)
                    metric.cumulated_batch_size = metric.cumulated_batch_size + count.to(metric.value.device)
        self._epoch_sums = None
