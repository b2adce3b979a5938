"""Log what a run produces as versioned W&B artifacts, so it can be downloaded from anywhere.

- `predictions-<run id>` (type `dataset`): one version per evaluated epoch holding `epoch_N.jsonl` and
  `epoch_N_pred.sql`, aliased `epoch_N`, plus `best` while that epoch holds the best EX so far.
- `adapter-<run id>` (type `model`; `model-<run id>` for full fine-tuning): at the end of fit the exported
  `adapter/` (or `model/`), aliased `latest`; the version with the best EX is aliased `best` and carries the
  metrics that made it best in its metadata. When the best epoch is not the last one, its checkpoint is
  exported to `adapter_best/` (or `model_best/`) and logged first, as the `best` version.

- `val/examples`: a table of the first `table_rows` prediction rows of every scored epoch (the baseline too);
  the run summary keeps the best `monitor` (EX), not the last.

Files are added by reference to the run dir (policy "immutable"), so nothing is copied: offline runs keep
them in place until `wandb sync` (or `text2sql sync`) uploads them with the run. Without a W&B logger the
callback does nothing. Everything comes from the run's record (`record`, job's `EpochLog`): each closed epoch's
row and `EpochScore`, and the best epoch; the model is logged at `on_fit_end`, after every callback's
`on_train_end` (ExportPretrained's export), wherever the callback stands in the list.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import lightning.pytorch as pl

from text2sql.errors import UserError
from text2sql.eval.metric_names import EX, EXAMPLES_TABLE
from text2sql.job.run_dir import RunDir, best_row

log = logging.getLogger(__name__)


def _wandb_run(trainer: pl.Trainer):
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None


TABLE_COLUMNS = ["epoch", "db_id", "question", "gold", "prediction", "status", "hardness", "decoding", "candidates"]


class WandbArtifacts(pl.Callback):
    def __init__(self, output_dir: str, log_model: bool = True, log_predictions: bool = True,
                 log_best: bool = True, monitor: str = EX, table_rows: int = 100, record=None):
        self.run_dir = RunDir(Path(output_dir).resolve())
        self.log_model, self.log_predictions, self.log_best, self.monitor = log_model, log_predictions, log_best, monitor
        self.table_rows, self.record = table_rows, record
        self.logged: list[tuple[str, list[str]]] = []  # (artifact name, aliases), in logging order
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        run = _wandb_run(trainer) if trainer.is_global_zero else None
        if run is not None:
            run.define_metric(self.monitor, summary="max")  # the run summary keeps the best EX, not the last
        if self.record is None:
            log.warning("WandbArtifacts has no run record (record: null is filled in by train.py): nothing to log")
            return
        self.record.subscribe(self.epoch_closed)

    # -- per scored epoch: the examples table and the predictions the record wrote -----------------------------
    def epoch_closed(self, row: dict, score) -> None:
        """The record closed an epoch (`row`; `score`: its EpochScore on rank 0 when it was scored)."""
        trainer = self._trainer
        run = _wandb_run(trainer) if trainer is not None and trainer.is_global_zero else None
        if run is None or score is None:
            return
        epoch = row["epoch"]
        self._log_table(run, epoch, score.rows, trainer.global_step)
        jsonl, pred_sql, _ = self.run_dir.prediction_files(epoch)
        if epoch < 0 or not self.log_predictions or not jsonl.is_file():
            return
        import wandb

        aliases = [f"epoch_{epoch}"]
        best = best_row([r for r in self.record.rows if r["epoch"] <= epoch], self.monitor)
        if best is not None and best["epoch"] == epoch:
            aliases.append("best")  # strictly better than every earlier epoch: the first best keeps it on ties
        artifact = wandb.Artifact(f"predictions-{run.id}", type="dataset", metadata=json_safe(row),
                                  description=f"dev predictions and verdicts after epoch {epoch}")
        for path in (jsonl, pred_sql):
            if path.is_file():
                artifact.add_file(str(path), name=path.name, policy="immutable", skip_cache=True)
        self._log(run, artifact, aliases)

    def _log_table(self, run, epoch: int, rows: list[dict], step: int) -> None:
        import wandb

        columns = TABLE_COLUMNS + (["exact_match"] if rows and "exact_match" in rows[0] else [])
        table = wandb.Table(columns=columns)
        for r in rows[: self.table_rows]:
            table.add_data(epoch, *(r.get(c) for c in columns[1:]))
        run.log({EXAMPLES_TABLE: table, "trainer/global_step": step})

    # -- end of fit: the exported adapter / model ---------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = _wandb_run(trainer)
        if run is None or not self.log_model or self.record is None:
            return
        from text2sql.training.checkpoint import is_peft_model

        final_dir = self.run_dir.exported_model(is_peft_model(pl_module.model))
        rows = self.record.rows
        best, last = self.record.best(self.monitor), rows[-1] if rows else {"epoch": trainer.current_epoch}
        exported = final_dir.is_dir()
        # rank 0 scored and exported: every rank decides alike (all of them take part in the best export)
        best, last, exported = trainer.strategy.broadcast((best, last, exported), src=0)
        if not exported:
            log.warning("no exported model in %s (ExportPretrained writes it): no model artifact to log", final_dir)
            return
        kind = final_dir.name  # "adapter" or "model"
        final_aliases = ["latest"]
        if best is not None and best["epoch"] == last["epoch"]:
            final_aliases.append("best")
        elif best is not None and self.log_best:
            best_dir = self._export_best(trainer, pl_module, best, final_dir.with_name(f"{kind}_best"))
            if best_dir is not None and trainer.is_global_zero:
                self._log_model(run, kind, best_dir, best, ["best"])
        if trainer.is_global_zero:
            self._log_model(run, kind, final_dir, last, final_aliases)

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
