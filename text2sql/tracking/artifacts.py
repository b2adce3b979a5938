"""Log what a run produces as versioned W&B artifacts, so it can be downloaded from anywhere.

- `predictions-<run id>` (type `dataset`): one version per evaluated epoch holding `epoch_N.jsonl` and
  `epoch_N_pred.sql`, aliased `epoch_N`, plus `best` while that epoch holds the best EX so far.
- `adapter-<run id>` (type `model`; `model-<run id>` for full fine-tuning): at the end of fit the exported
  `adapter/` (or `model/`), aliased `latest`; the version with the best EX is aliased `best` and carries the
  metrics that made it best in its metadata. When the best epoch is not the last one, its checkpoint is
  exported to `adapter_best/` (or `model_best/`) and logged first, as the `best` version.

Files are added by reference to the run dir (policy "immutable"), so nothing is copied: offline runs keep
them in place until `wandb sync` (or `text2sql sync`) uploads them with the run. Without a W&B logger the
callback does nothing.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import lightning.pytorch as pl

from text2sql.errors import UserError
from text2sql.eval.metric_names import EX, VAL_LOSS

log = logging.getLogger(__name__)


def _wandb_run(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None


def _clean(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isnan(v)}


class WandbArtifacts(pl.Callback):
    def __init__(self, output_dir: str, log_model: bool = True, log_predictions: bool = True,
                 log_best: bool = True, monitor: str = EX):
        self.output_dir = Path(output_dir).resolve()
        self.log_model, self.log_predictions, self.log_best, self.monitor = log_model, log_predictions, log_best, monitor
        self.epochs: list[dict] = []  # {"epoch", val metrics...} of each epoch of this fit
        self.logged: list[tuple[str, list[str]]] = []  # (artifact name, aliases), in logging order

    # -- per epoch: the predictions the EX callback wrote -------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning 2 validates inside the training epoch: the EX callback has written this epoch's files by now
        epoch = trainer.current_epoch
        row = {"epoch": epoch, **self._ex_metrics(trainer, epoch)}
        if VAL_LOSS in trainer.callback_metrics:
            row[VAL_LOSS] = float(trainer.callback_metrics[VAL_LOSS])
        self.epochs.append(row)
        run = _wandb_run(trainer)
        if run is None or not trainer.is_global_zero or not self.log_predictions:
            return
        pred_dir = self.output_dir / "predictions"
        files = [pred_dir / f"epoch_{epoch}.jsonl", pred_dir / f"epoch_{epoch}_pred.sql"]
        if self.monitor not in row or not files[0].is_file():  # not an evaluated epoch (eval.every_n_epochs)
            return
        import wandb

        aliases = [f"epoch_{epoch}"]
        scored = [r for r in self.epochs[:-1] if self.monitor in r]
        if self.monitor in row and all(row[self.monitor] > r[self.monitor] for r in scored):
            aliases.append("best")  # strictly better than every earlier epoch: the first best keeps it on ties
        artifact = wandb.Artifact(f"predictions-{run.id}", type="dataset", metadata=json_safe(row),
                                  description=f"dev predictions and verdicts after epoch {epoch}")
        for path in files:
            if path.is_file():
                artifact.add_file(str(path), name=path.name, policy="immutable", skip_cache=True)
        self._log(run, artifact, aliases)

    @staticmethod
    def _ex_metrics(trainer: pl.Trainer, epoch: int) -> dict:
        """This epoch's EX metrics as the EX callback scored them ({} for an epoch it skipped)."""
        from text2sql.eval.callback import ExecutionAccuracyCallback

        for callback in trainer.callbacks:
            if isinstance(callback, ExecutionAccuracyCallback):
                rows = [r for r in callback.history if r["epoch"] == epoch]
                return _clean({k: v for k, v in rows[-1].items() if k != "epoch"}) if rows else {}
        return {}

    # -- end of fit: the exported adapter / model ---------------------------------------------------------------
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = _wandb_run(trainer)
        if run is None or not self.log_model:
            return
        final_dir = self._final_dir(trainer, pl_module)  # the same on every rank: they all take part below
        if final_dir is None:
            return
        scored = [r for r in self.epochs if self.monitor in r]
        best = max(scored, key=lambda r: r[self.monitor]) if scored else None  # first max, as ModelCheckpoint
        last = self.epochs[-1] if self.epochs else {"epoch": trainer.current_epoch}
        best, last = trainer.strategy.broadcast((best, last), src=0)  # rank 0 scored: every rank decides alike
        kind = final_dir.name  # "adapter" or "model"
        final_aliases = ["latest"]
        if best is not None and best["epoch"] == last["epoch"]:
            final_aliases.append("best")
        elif best is not None and self.log_best:
            best_dir = self._export_best(trainer, pl_module, best, final_dir.with_name(f"{kind}_best"))
            if best_dir is not None and trainer.is_global_zero:
                self._log_model(run, kind, best_dir, best, ["best"])
        if trainer.is_global_zero and final_dir.is_dir():
            self._log_model(run, kind, final_dir, last, final_aliases)

    def _final_dir(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        from text2sql.training.checkpoint import ExportPretrained, is_peft_model

        exports = [c for c in trainer.callbacks if isinstance(c, ExportPretrained)]
        if not exports:
            log.warning("no ExportPretrained callback: no model artifact to log")
            return None
        if trainer.callbacks.index(exports[0]) > trainer.callbacks.index(self):
            log.warning("WandbArtifacts runs before ExportPretrained: list it after export_pretrained in callbacks")
            return None
        export = exports[0]
        sub = export.adapter_subdir if is_peft_model(pl_module.model) else export.model_subdir
        return (export.output_dir / sub).resolve()

    def _export_best(self, trainer, pl_module, best: dict, out_dir: Path) -> Path | None:
        """The best epoch's checkpoint saved like the final adapter (all ranks take part, as in the export)."""
        import torch

        from text2sql.training.checkpoint import export_pretrained

        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if not ckpt or not Path(ckpt).is_file():  # none kept, or a DeepSpeed checkpoint directory
            log.warning("best epoch %d has no single-file checkpoint (%r): no separate `best` model version",
                        best["epoch"], ckpt)
            return None
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("epoch") != best["epoch"]:
            log.warning("best checkpoint %s is from epoch %s, not the best epoch %d: no `best` model version",
                        ckpt, saved.get("epoch"), best["epoch"])
            return None
        # the run is over (ExportPretrained already saved the final weights): load the best ones in place
        pl_module.load_state_dict(saved["state_dict"], strict=False)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None) if trainer.datamodule is not None else None
        return export_pretrained(trainer, pl_module.model, out_dir, tokenizer)

    def _log_model(self, run, kind: str, path: Path, metrics: dict, aliases: list[str]) -> None:
        import wandb

        metadata = json_safe({**metrics, "monitor": self.monitor, "kind": kind, "dir": str(path)})
        artifact = wandb.Artifact(f"{kind}-{run.id}", type="model", metadata=metadata,
                                  description=f"{kind} after epoch {metrics.get('epoch')} ({', '.join(aliases)})")
        artifact.add_dir(str(path), policy="immutable", skip_cache=True)
        self._log(run, artifact, aliases)

    def _log(self, run, artifact, aliases: list[str]) -> None:
        run.log_artifact(artifact, aliases=aliases)
        self.logged.append((artifact.name, aliases))
        log.info("logged W&B artifact %s (%s)", artifact.name, ", ".join(aliases))


def json_safe(metadata: dict) -> dict:
    """W&B refuses artifact metadata holding inf/nan (strict JSON); a diverged `val/loss` is kept as the string
    "inf"/"nan" instead of failing the job."""
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in metadata.items()}


# -- reading them back: `text2sql predict --adapter entity/project/adapter-<id>:best` ----------------------------
_REF = re.compile(r"^(?:[\w.-]+/){1,2}[\w.-]+:[\w.-]+$")  # [entity/]project/name:alias-or-version


def is_artifact_ref(value: str) -> bool:
    """A W&B artifact reference rather than a local dir (an existing path always wins)."""
    return bool(_REF.match(value)) and not Path(value).exists()


def resolve_artifact(ref: str, root: Path) -> tuple[str, Path]:
    """Download a model artifact with W&B's API into `root/<name>_<version>`; ('adapter'|'model', dir)."""
    try:
        import wandb

        artifact = wandb.Api().artifact(ref, type="model")
        path = Path(artifact.download(root=str(root / f"{artifact.name.replace(':', '_')}")))
    except Exception as err:  # noqa: BLE001 - network, login, unknown name: one line that says which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot download W&B artifact {ref} (needs network and `wandb login`): {first}") from None
    if (path / "adapter_config.json").is_file():
        return "adapter", path
    if (path / "config.json").is_file():
        return "model", path
    raise UserError(f"W&B artifact {ref} holds neither adapter_config.json nor config.json")
