"""One Hydra sweep dir as data: its jobs (overrides, metrics.json, errors), the swept keys, the ranking.

A sweep dir is what ``python train.py -m ...`` writes, ``multirun/<date>/<time>/``: one sub-directory per job
(``0/``, ``1/``, ...), each with ``.hydra/overrides.yaml`` and, when the job got far enough, ``metrics.json``
(format: :mod:`text2sql.job.run_dir`). Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from text2sql.errors import MetricsFileError
from text2sql.eval.metric_names import EX, EX_BY_HARDNESS, TRAIN_LOSS, TRAIN_LOSS_EPOCH, VAL_LOSS
from text2sql.job.run_dir import RunDir, best_row

LOSS_KEYS = (TRAIN_LOSS_EPOCH, TRAIN_LOSS)  # Lightning's epoch aggregate first, else the last step's value
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b.*")
# Hydra sweep syntax that declares a key swept (`a,b`, `choice(...)`, `tag(log, interval(...))`, ...)
_SWEEP_SYNTAX = re.compile(r"\s*(choice|range|interval|tag|glob)\(")


@dataclass
class Job:
    """One job of a sweep, as read from its directory."""

    name: str                      # the job dir name ("0", "1", ... for Hydra's default subdir)
    path: Path
    overrides: dict[str, Any]      # key -> parsed value, from .hydra/overrides.yaml
    status: str                    # "ok" | "failed"
    error: str | None = None
    best: float | None = None      # best value of the metric over the epochs
    best_epoch: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric) for the curve
    epochs: int = 0                # number of epochs recorded in history
    final_loss: float | None = None
    val_loss: float | None = None  # last epoch's val/loss: breaks ties in the metric (lower first)
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/loss)
    hardness: dict[str, float] = field(default_factory=dict)       # "easy" -> EX at the best epoch
    wall_time_s: float | None = None


# ---------------------------------------------------------------------------------------------- reading


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _parse_value(text: str) -> Any:
    """An override's value as YAML would type it: 4 -> int, 1e-3 -> float, null -> None, else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string (no dot); Hydra reads it as a float.
        f = _finite(value)
        if f is not None and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip()):
            return f
    if isinstance(value, (list, dict)):
        return text
    return value


def read_overrides(job_dir: Path) -> dict[str, Any]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError:
        return {}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            continue
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        out[key] = _parse_value(value)
    return out


def _error_from_log(job_dir: Path) -> str | None:
    """The job's exception: last line of ``error.txt`` (the traceback train.py saves), else the last exception
    line of its Hydra log (``<job_name>.log``), if any."""
    error_txt = job_dir / "error.txt"
    if error_txt.is_file():
        try:
            line = _one_line(error_txt.read_text(errors="replace"))
        except OSError:
            line = ""
        if line:
            return line
    logs = sorted(job_dir.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            # Hydra's log lines are "[time][logger][LEVEL] - message"
            msg = line.split("] - ", 1)[-1].strip()
            if _EXCEPTION_LINE.match(msg):
                return msg
        for line in reversed(lines):
            if "[ERROR]" in line:
                return line.split("] - ", 1)[-1].strip()
    return None


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    # a traceback's useful line is its last one
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def read_job(job_dir: Path, metric: str = EX) -> Job:
    job = Job(name=job_dir.name, path=job_dir, overrides=read_overrides(job_dir), status="failed")
    try:
        data = RunDir(job_dir).read_metrics()
    except MetricsFileError as err:
        job.error = _one_line(str(err))
        return job
    if data is None:
        job.error = _error_from_log(job_dir) or "no metrics.json (crashed, killed or still running)"
        return job

    status = str(data.get("status") or "ok")
    job.status = "ok" if status == "ok" else "failed"
    if data.get("error"):
        job.error = _one_line(data["error"])
    elif job.status == "failed":
        job.error = _error_from_log(job_dir) or f"status {status!r} without an error message"
    job.wall_time_s = _finite(data.get("wall_time_s"))

    history = [h for h in (data.get("history") or []) if isinstance(h, dict)]
    final = data.get("final") if isinstance(data.get("final"), dict) else {}
    best = data.get("best") if isinstance(data.get("best"), dict) else {}

    for i, h in enumerate(history):
        value = _finite(h.get(metric))
        epoch = h.get("epoch", i)
        epoch = int(epoch) if _finite(epoch) is not None else i
        if value is not None:
            job.history.append((epoch, value))
        if _finite(h.get(VAL_LOSS)) is not None:
            job.loss_history.append((epoch, _finite(h[VAL_LOSS])))
    if job.loss_history:
        job.val_loss = job.loss_history[-1][1]
    elif _finite(final.get(VAL_LOSS)) is not None:
        job.val_loss = _finite(final[VAL_LOSS])
    job.epochs = len({h.get("epoch", i) for i, h in enumerate(history)})

    best_entry: dict = {}
    if job.history:
        best_entry = best_row(history, metric) or {}
        job.best = _finite(best_entry.get(metric))
        job.best_epoch = int(best_entry.get("epoch", 0)) if _finite(best_entry.get("epoch")) is not None else None
    elif _finite(best.get(metric)) is not None:
        job.best = _finite(best[metric])
        job.best_epoch = int(best["epoch"]) if _finite(best.get("epoch")) is not None else None
    elif _finite(final.get(metric)) is not None:
        job.best = _finite(final[metric])

    for h, key in EX_BY_HARDNESS.items():
        value = _finite(best_entry.get(key)) if best_entry else None
        if value is None and not best_entry:
            value = _finite(final.get(key))
        if value is not None:
            job.hardness[h] = value

    for source in [final, *reversed(history)]:
        loss = next((_finite(source.get(k)) for k in LOSS_KEYS if _finite(source.get(k)) is not None), None)
        if loss is not None:
            job.final_loss = loss
            break
    return job


def _job_sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Sub-directories that are Hydra jobs: they hold ``.hydra/`` or ``metrics.json``."""
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and (RunDir(p).hydra_dir.is_dir() or RunDir(p).metrics_file.is_file())),
        key=_job_sort_key,
    )


def _declared_sweep(sweep_dir: Path) -> dict[str, str]:
    """Swept key -> its sweep expression, as ``multirun.yaml`` declares them (command line and
    hydra.sweeper.params)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    hydra = cfg.get("hydra") or {}
    declared: dict[str, str] = {}
    params = (hydra.get("sweeper") or {}).get("params") or {}
    if isinstance(params, dict):
        declared.update({str(k): str(v) for k, v in params.items()})
    for item in ((hydra.get("overrides") or {}).get("task")) or []:
        key, sep, value = str(item).partition("=")
        if sep and ("," in value or _SWEEP_SYNTAX.match(value)):
            declared[key.lstrip("+~")] = value
    return {k: v for k, v in declared.items() if not k.startswith("hydra.")}


def declared_sweep_keys(sweep_dir: Path) -> list[str]:
    """Keys the sweep declared as swept in ``multirun.yaml``."""
    return list(_declared_sweep(sweep_dir))


def declared_log_keys(sweep_dir: Path) -> set[str]:
    """Keys the sweep searches on a log scale (Optuna's ``tag(log, interval(...))``)."""
    return {k for k, v in _declared_sweep(sweep_dir).items() if re.match(r"\s*tag\(\s*log\b", v)}


def swept_keys(jobs: list[Job], declared: list[str] = ()) -> list[str]:
    """Override keys that take more than one value across the jobs, plus the declared ones, in first-seen order."""
    order: list[str] = []
    for job in jobs:
        for key in job.overrides:
            if key not in order:
                order.append(key)
    values: dict[str, set] = {k: {repr(j.overrides.get(k)) for j in jobs} for k in order}
    keys = [k for k in order if len(values[k]) > 1 or k in declared]
    if not keys and len(jobs) == 1:
        keys = order
    return keys


def fixed_overrides(jobs: list[Job], swept: list[str]) -> dict[str, Any]:
    if not jobs:
        return {}
    common = {k: v for k, v in jobs[0].overrides.items() if k not in swept}
    return {k: v for k, v in common.items() if all(k in j.overrides and j.overrides[k] == v for j in jobs)}


def rank(jobs: list[Job]) -> list[Job]:
    """Best metric first; ok jobs without the metric next; failed jobs last.

    Ties (common early on, when every job still has 0 EX) go to the lower final val/loss, then to job order.
    """
    order = {id(j): i for i, j in enumerate(jobs)}

    def key(j: Job) -> tuple:
        group = 2 if j.status != "ok" else (1 if j.best is None else 0)
        return (group, -(j.best if j.best is not None else 0.0),
                j.val_loss if j.val_loss is not None else math.inf, order[id(j)])

    return sorted(jobs, key=key)


