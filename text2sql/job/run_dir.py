"""A training run's directory: its layout, `metrics.json`, and finding a run from any path inside it.

Every reader and writer of a run dir goes through `RunDir` (train.py, resume, the history callback, predict,
merge, `text2sql report`), so the format has one owner. Imports no torch.

```
RUN/
  .hydra/config.yaml overrides.yaml hydra.yaml resolved_paths.json
  metrics.json          {"final", "history": [{"epoch", metric...}], "best": {metric, "epoch"}, "status", ...}
  checkpoints/last.ckpt  checkpoints/epoch=N-....ckpt
  adapter/ (model/)      predictions/  train.log  wandb/run_id
```
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2sql.errors import MetricsFileError

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
HYDRA = ".hydra"
RESOLVED_PATHS = "resolved_paths.json"
WANDB_ID = Path("wandb") / "run_id"


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
                      wall_time_s: float, write: bool = True, step: int | None = None) -> dict:
        """metrics.json: the final value of every metric, the per-epoch history and the best epoch (atomic).

        `step`: where an interrupted or preempted run stopped. A `baseline` (`record_baseline`) is kept."""
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
        baseline = self._read_or_empty().get("baseline") if write else None
        if baseline is not None:
            record["baseline"] = baseline
        if write:
            self._write(record)
        return record

    def record_baseline(self, row: dict) -> None:
        """The model's scores before its first training step (`eval.before_training`), kept by later writes."""
        self._write({**self._read_or_empty(), "baseline": row})

    def _write(self, record: dict) -> None:
        tmp = self.metrics_file.with_name(METRICS + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.metrics_file)

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
        tmp = target.with_name(target.name + ".tmp")
        resolved = {k: str(Path(v).resolve()) if Path(v).exists() else str(v) for k, v in paths.items()}
        tmp.write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)

    def resolved_paths(self) -> dict[str, str]:
        """What `record_resolved_paths` saved ({} when the run has none)."""
        path = self.hydra_dir / RESOLVED_PATHS
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except ValueError:
            return {}
