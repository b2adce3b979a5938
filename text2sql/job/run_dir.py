"""A training run's directory: its layout, `metrics.json`, and finding a run from any path inside it.

Every reader and writer of a run dir goes through `RunDir` (train.py, resume, the run's `EpochLog`, predict,
merge, `text2sql report`, the W&B artifacts), so the format has one owner. Imports no torch.

```
RUN/
  .hydra/config.yaml overrides.yaml hydra.yaml resolved_paths.json
  metrics.json          {"final", "history": [{"epoch", metric...}], "best": {metric, "epoch"}, "status", ...}
  checkpoints/last.ckpt  checkpoints/epoch=N-....ckpt
  adapter/ (model/)      predictions/epoch_N.jsonl epoch_N_pred.sql epoch_N_gold.sql  train.log  wandb/run_id
```
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2sql.atomic import atomic_path
from text2sql.errors import MetricsFileError

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
HYDRA = ".hydra"
RESOLVED_PATHS = "resolved_paths.json"
WANDB_ID = Path("wandb") / "run_id"
PREDICTIONS = "predictions"
ADAPTER, MODEL = "adapter", "model"  # ExportPretrained's defaults


def best_row(history: list[dict], metric: str) -> dict | None:
    """The epoch row with the highest finite `metric`; the first such epoch on ties (what ModelCheckpoint keeps)."""
    scored = [r for r in history if isinstance(r, dict) and _finite(r.get(metric)) is not None]
    return max(scored, key=lambda r: r[metric]) if scored else None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    # -- layout ---------------------------------------------------------------------------------------------
    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    @property
    def hydra_dir(self) -> Path:
        return self.path / HYDRA

    @property
    def wandb_id_file(self) -> Path:
        return self.path / WANDB_ID

    def is_run(self) -> bool:
        """A Hydra job dir: `.hydra/config.yaml` is there."""
        return (self.hydra_dir / "config.yaml").is_file()

    @classmethod
    def find(cls, path: str | os.PathLike, with_checkpoints: bool = False) -> RunDir | None:
        """The run dir holding `path` (the run itself, its checkpoints/, a checkpoint or adapter in it): the
        nearest dir at most three levels up with `.hydra/config.yaml` (and `checkpoints/` when asked)."""
        p = Path(path).expanduser().resolve()
        for candidate in (p, *p.parents[:3]):
            run = cls(candidate)
            if run.is_run() and (not with_checkpoints or run.checkpoints.exists()):
                return run
        return None

    # -- metrics.json ---------------------------------------------------------------------------------------
    def read_metrics(self) -> dict | None:
        """The parsed metrics.json; None when the run has none; MetricsFileError when it is unreadable."""
        if not self.metrics_file.is_file():
            return None
        try:
            data = json.loads(self.metrics_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise MetricsFileError(f"unreadable {METRICS}: {err}") from None
        if not isinstance(data, dict):
            raise MetricsFileError(f"unreadable {METRICS}: not a JSON object")
        return data

    def _read_or_empty(self) -> dict:
        try:
            return self.read_metrics() or {}
        except MetricsFileError:
            return {}

    def history(self) -> list[dict]:
        """The per-epoch rows earlier processes of this run wrote (empty when there are none)."""
        return [r for r in (self._read_or_empty().get("history") or []) if isinstance(r, dict)]

    def wall_time(self) -> float:
        """Seconds the earlier processes of this run spent, so wall_time_s covers the whole run."""
        return _finite(self._read_or_empty().get("wall_time_s")) or 0.0

    def write_metrics(self, history: list[dict], metric: str, status: str, error: str | None,
                      wall_time_s: float, baseline: dict | None = None, step: int | None = None,
                      write: bool = True) -> dict:
        """metrics.json: the final value of every metric, the per-epoch history and the best epoch (atomic).

        The one writer of the file (`job.history.EpochLog.save` is its one caller). `baseline`: the scores before
        training (`eval.before_training`); `step`: where an interrupted or preempted run stopped."""
        final: dict = {}
        for row in history:
            final.update({k: v for k, v in row.items() if k != "epoch"})
        best = best_row(history, metric)
        record = {
            "final": final,
            "history": history,
            "best": {metric: best[metric], "epoch": best["epoch"]} if best else None,
            "status": status,
            "error": error,
            "wall_time_s": round(wall_time_s, 2),
        }
        if step is not None:
            record["step"] = step
        if baseline is not None:
            record["baseline"] = baseline
        if write:
            with atomic_path(self.metrics_file) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return record

    def baseline(self) -> dict | None:
        """The scores before training an earlier process of this run recorded (None when there are none)."""
        baseline = self._read_or_empty().get("baseline")
        return baseline if isinstance(baseline, dict) else None

    # -- predictions/ ---------------------------------------------------------------------------------------
    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    def prediction_files(self, epoch: int) -> tuple[Path, Path, Path]:
        """(epoch_N.jsonl, epoch_N_pred.sql, epoch_N_gold.sql) of a scored epoch (-1: before training)."""
        return tuple(self.predictions / f"epoch_{epoch}{suffix}" for suffix in (".jsonl", "_pred.sql", "_gold.sql"))

    def write_predictions(self, epoch: int, rows: list[dict], questions: list | None = None) -> None:
        """One scored epoch's rows (`text2sql.eval.score.EpochScore.rows`): every row as a JSON line, and the
        predictions and gold of the same examples (Spider's `SQL<TAB>db_id`) for `text2sql evaluate` to re-score
        the epoch; multi-turn data in the official layout, a blank line after each interaction. `questions`: split
        files whose entries of these rows (`index`) are written beside the gold file (`eval.questions`)."""
        from text2sql.eval.interaction import pred_lines, sessions_text
        from text2sql.eval.questions import write_questions

        self.predictions.mkdir(parents=True, exist_ok=True)
        jsonl, pred_file, gold_file = self.prediction_files(epoch)
        with open(jsonl, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        preds = [r["prediction"] for r in rows]
        golds = [f"{' '.join(r['gold'].split())}\t{r['db_id']}" for r in rows]
        if rows and "interaction" in rows[0]:
            ids = [r["interaction"] for r in rows]
            text, gold_text = pred_lines(preds, ids), sessions_text(golds, ids)
        else:
            text, gold_text = ("".join(line + "\n" for line in lines) for lines in (preds, golds))
        pred_file.write_text(text, encoding="utf-8")
        gold_file.write_text(gold_text, encoding="utf-8")
        if questions:
            write_questions(gold_file, questions, [r["index"] for r in rows])

    def exported_model(self, peft: bool) -> Path:
        """Where the trained model is exported at the end of fit: `adapter/` (PEFT) or `model/` (full)."""
        return self.path / (ADAPTER if peft else MODEL)

    # -- where the run was started and what it resolved -----------------------------------------------------
    def start_dir(self) -> Path | None:
        """The directory the run was started in (Hydra records it in `.hydra/hydra.yaml`): what its relative
        paths (`.cache/text2sql`, `data/spider`, ...) are relative to."""
        hydra_yaml = self.hydra_dir / "hydra.yaml"
        if not hydra_yaml.is_file():
            return None
        from omegaconf import OmegaConf

        start = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd")
        return Path(start) if start else None

    def record_resolved_paths(self, paths: dict[str, str]) -> None:
        """Save the absolute paths a run used (cache, dataset root, model): `.hydra/config.yaml` keeps them
        unresolved (`${oc.env:TEXT2SQL_CACHE,...}`), which would resolve differently in another shell or dir."""
        target = self.hydra_dir / RESOLVED_PATHS
        target.parent.mkdir(parents=True, exist_ok=True)
        resolved = {k: str(Path(v).resolve()) if Path(v).exists() else str(v) for k, v in paths.items()}
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")

    def resolved_paths(self) -> dict[str, str]:
        """What `record_resolved_paths` saved ({} when the run has none)."""
        path = self.hydra_dir / RESOLVED_PATHS
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except ValueError:
            return {}
