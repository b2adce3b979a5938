"""`text2sql report MULTIRUN_DIR`: rank the jobs of one Hydra sweep dir by their best execution accuracy.

A sweep dir is what ``python train.py -m ...`` writes, ``multirun/<date>/<time>/``: one sub-directory per job
(``0/``, ``1/``, ...), each with ``.hydra/overrides.yaml`` and, when the job got far enough, ``metrics.json``
(format: text2sql.job.run_dir). The verb writes three files into the sweep dir:

- ``summary.md``  a markdown table ranked by the best value of ``--metric`` (default ``val/execution_accuracy``):
  job, the swept values, best value and its epoch, final train loss, per-hardness EX at the best epoch,
  wall time; failed jobs last with their error;
- ``summary.csv`` the same rows, raw numbers;
- ``summary.png`` the metric per epoch for every job, and the best value against each swept parameter.

and prints the top rows. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from text2sql.errors import MetricsFileError
from text2sql.job.run_dir import RunDir, best_row

DEFAULT_METRIC = "val/execution_accuracy"
HARDNESS = ("easy", "medium", "hard", "extra")
# Lightning names an epoch-aggregated metric logged with on_step=True and on_epoch=True "<name>_epoch".
LOSS_KEYS = ("train/loss_epoch", "train/loss", "train_loss", "loss")
VAL_LOSS_KEY = "val/loss"
SUMMARY_FILES = ("summary.md", "summary.csv", "summary.png")
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b.*")


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


def read_job(job_dir: Path, metric: str = DEFAULT_METRIC) -> Job:
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
    prefix = metric.rsplit("/", 1)[0] + "/" if "/" in metric else ""

    for i, h in enumerate(history):
        value = _finite(h.get(metric))
        epoch = h.get("epoch", i)
        epoch = int(epoch) if _finite(epoch) is not None else i
        if value is not None:
            job.history.append((epoch, value))
        if _finite(h.get(VAL_LOSS_KEY)) is not None:
            job.loss_history.append((epoch, _finite(h[VAL_LOSS_KEY])))
    if job.loss_history:
        job.val_loss = job.loss_history[-1][1]
    elif _finite(final.get(VAL_LOSS_KEY)) is not None:
        job.val_loss = _finite(final[VAL_LOSS_KEY])
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

    for h in HARDNESS:
        key = f"{prefix}ex_{h}"
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


def _declared_sweep_keys(sweep_dir: Path) -> list[str]:
    """Keys the sweep declared as swept in ``multirun.yaml`` (command-line sweeps and hydra.sweeper.params)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return []
    hydra = cfg.get("hydra") or {}
    keys: list[str] = []
    params = (hydra.get("sweeper") or {}).get("params") or {}
    if isinstance(params, dict):
        keys += [str(k) for k in params]
    task = ((hydra.get("overrides") or {}).get("task")) or []
    for item in task:
        key, sep, value = str(item).partition("=")
        if sep and ("," in value or re.match(r"\s*(choice|range|interval|tag|glob)\(", value)):
            keys.append(key.lstrip("+~"))
    return [k for k in keys if not k.startswith("hydra.")]


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


# ---------------------------------------------------------------------------------------------- writing


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(value)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(metric: str) -> str:
    """Display name of a metric: val/execution_accuracy -> EX."""
    name = metric.rsplit("/", 1)[-1]
    return "EX" if name == "execution_accuracy" else name


def _columns(metric: str, swept: list[str], jobs: list[Job]) -> tuple[list[str], list[str]]:
    hardness = [h for h in HARDNESS if any(h in j.hardness for j in jobs)]
    short = _short(metric)
    md = ["rank", "job", *swept, f"best {short}", "epoch", "final train loss", "final val loss",
          *[f"EX {h}" for h in hardness], "wall time", "status"]
    csv_cols = ["rank", "job", *swept, f"best_{metric.rsplit('/', 1)[-1]}", "best_epoch", "epochs", "final_train_loss",
                "final_val_loss", *[f"ex_{h}" for h in hardness], "wall_time_s", "status", "error", "job_dir"]
    return md, csv_cols


def _rows(ranked: list[Job], swept: list[str]) -> list[dict]:
    rows = []
    for i, j in enumerate(ranked, 1):
        rows.append({
            "rank": i, "job": j.name, "swept": [j.overrides.get(k) for k in swept],
            "best": j.best, "best_epoch": j.best_epoch, "epochs": j.epochs, "final_loss": j.final_loss, "val_loss": j.val_loss,
            "hardness": dict(j.hardness), "wall": j.wall_time_s, "status": j.status, "error": j.error,
            "path": j.path,
        })
    return rows


def write_csv(path: Path, ranked: list[Job], swept: list[str], metric: str) -> None:
    _, cols = _columns(metric, swept, ranked)
    hardness = [h for h in HARDNESS if any(h in j.hardness for j in ranked)]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in _rows(ranked, swept):
            w.writerow([r["rank"], r["job"], *["" if v is None else v for v in r["swept"]],
                        "" if r["best"] is None else r["best"], "" if r["best_epoch"] is None else r["best_epoch"],
                        r["epochs"], "" if r["final_loss"] is None else r["final_loss"],
                        "" if r["val_loss"] is None else r["val_loss"],
                        *[r["hardness"].get(h, "") for h in hardness],
                        "" if r["wall"] is None else round(r["wall"], 3), r["status"], r["error"] or "",
                        r["path"].name])


def _optuna_results(sweep_dir: Path) -> dict | None:
    path = sweep_dir / "optimization_results.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def markdown(sweep_dir: Path, ranked: list[Job], swept: list[str], metric: str) -> str:
    md_cols, _ = _columns(metric, swept, ranked)
    hardness = [h for h in HARDNESS if any(h in j.hardness for j in ranked)]
    n_ok = sum(j.status == "ok" for j in ranked)
    lines = [f"# Sweep `{sweep_dir.name}`", ""]
    lines.append(f"{len(ranked)} jobs ({n_ok} ok, {len(ranked) - n_ok} failed), ranked by the best `{metric}` "
                 f"over the epochs, ties by the lower final val loss (epoch numbers as in `predictions/epoch_<n>.jsonl`; "
                 f"per-hardness EX at the best epoch).")
    fixed = fixed_overrides(ranked, swept)
    if fixed:
        lines += ["", "Fixed overrides: " + " ".join(f"`{k}={_fmt(v)}`" for k, v in fixed.items())]
    opt = _optuna_results(sweep_dir)
    if opt and "best_params" in opt:
        params = " ".join(f"`{k}={_fmt(v)}`" for k, v in (opt.get("best_params") or {}).items())
        lines += ["", f"Optuna best trial: {params} -> {_fmt(_finite(opt.get('best_value')))}"]
    lines += ["", "| " + " | ".join(_md_escape(c) for c in md_cols) + " |",
              "|" + "|".join("---:" if c not in ("job", "status") else "---" for c in md_cols) + "|"]
    for r in _rows(ranked, swept):
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        cells = [r["rank"], r["job"], *[_fmt(v) for v in r["swept"]], _fmt(r["best"]),
                 "" if r["best_epoch"] is None else r["best_epoch"], _fmt(r["final_loss"]), _fmt(r["val_loss"]),
                 *[_fmt(r["hardness"].get(h)) for h in hardness], _fmt_time(r["wall"]), status]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", "![sweep summary](summary.png)", ""]
    return "\n".join(lines)


def _job_label(job: Job, swept: list[str]) -> str:
    values = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(job.overrides.get(k))}" for k in swept)
    return f"{job.name}: {values}" if values else job.name


def _unit_ylim(ax, values: list[float]) -> None:
    """For a share in [0, 1] (EX): start the axis at 0, and keep it readable when every value is 0."""
    if values and all(0.0 <= v <= 1.0 for v in values):
        top = max(values)
        ax.set_ylim(-0.02 * max(top, 0.1), max(top * 1.08, 0.1))


def plot(path: Path, ranked: list[Job], swept: list[str], metric: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    n_params = len(swept)
    with_loss = any(j.loss_history for j in ranked)
    per_row = min(n_params, 3) or 1                             # parameter subplots per row
    ncols = math.lcm(per_row, 2) if with_loss else per_row      # the top row splits in two when val/loss is there
    span = ncols // per_row                                     # grid columns per parameter subplot
    nrows = 1 + math.ceil(n_params / per_row)
    width = max(4.2 * per_row, 9.0 if with_loss else 6.0)
    fig = plt.figure(figsize=(width, 3.6 * nrows), constrained_layout=True)
    gs = GridSpec(nrows, ncols, figure=fig)
    short = _short(metric)

    ax = fig.add_subplot(gs[0, : ncols // 2] if with_loss else gs[0, :])
    plotted = 0
    for job in ranked:
        if not job.history:
            continue
        epochs, values = zip(*sorted(job.history))
        ax.plot(epochs, values, marker="o", ms=3, lw=1.4, label=_job_label(job, swept))
        plotted += 1
    failed = [j for j in ranked if j.status != "ok"]
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{short} per epoch" + (f" ({len(failed)} failed job(s) not shown)" if failed else ""))
    ax.grid(alpha=0.3)
    _unit_ylim(ax, [v for j in ranked for _, v in j.history])
    if plotted:
        ax.legend(fontsize=7, ncol=2 if plotted > 8 else 1, loc="best", frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no job recorded an epoch", ha="center", va="center", transform=ax.transAxes)

    if with_loss:
        ax = fig.add_subplot(gs[0, ncols // 2 :])
        for job in ranked:
            if job.loss_history:
                epochs, values = zip(*sorted(job.loss_history))
                ax.plot(epochs, values, marker="o", ms=3, lw=1.4, label=_job_label(job, swept))
        ax.set_xlabel("epoch")
        ax.set_ylabel(VAL_LOSS_KEY)
        ax.set_title(f"{VAL_LOSS_KEY} per epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)

    ok = [j for j in ranked if j.best is not None]
    for i, key in enumerate(swept):
        col = (i % per_row) * span
        ax = fig.add_subplot(gs[1 + i // per_row, col : col + span])
        xs = [j.overrides.get(key) for j in ok]
        ys = [j.best for j in ok]
        numeric = xs and all(_finite(x) is not None for x in xs)
        if numeric:
            xf = [float(x) for x in xs]
            ax.scatter(xf, ys, s=28, zorder=3)
            if min(xf) > 0 and max(xf) / min(xf) >= 20:
                ax.set_xscale("log")
            distinct = sorted(set(xf))
            if len(distinct) <= 6:  # a grid: tick exactly the swept values
                ax.set_xticks(distinct, [_fmt(x) for x in distinct])
                ax.minorticks_off()
            # mean of the best values at each setting, to read a trend through the other swept keys
            means = {}
            for x, y in zip(xf, ys):
                means.setdefault(x, []).append(y)
            mx = sorted(means)
            ax.plot(mx, [sum(means[x]) / len(means[x]) for x in mx], lw=1, alpha=0.6, color="gray", zorder=2,
                    label="mean at each value")
            if len(means) < len(xf):
                ax.legend(fontsize=7, frameon=False, loc="best")
        elif xs:
            cats = sorted({str(x) for x in xs})
            pos = {c: k for k, c in enumerate(cats)}
            ax.scatter([pos[str(x)] for x in xs], ys, s=28, zorder=3)
            ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
        else:
            empty = "no successful job" if not any(j.status == "ok" for j in ranked) else f"no job has {short}"
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        _unit_ylim(ax, ys)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {short}")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, format="png")  # path may be a temp name without .png
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- verb


@dataclass
class Report:
    sweep_dir: Path
    metric: str
    jobs: list[Job]           # ranked
    swept: list[str]
    files: dict[str, Path]


# Metrics every training job may log; a name outside these and the jobs' own keys is a typo.
STANDARD_METRICS = (DEFAULT_METRIC, *(f"val/ex_{h}" for h in HARDNESS), VAL_LOSS_KEY, "train/loss")


def recorded_metrics(job_dirs: list[Path]) -> set[str]:
    """Every numeric key the jobs' metrics.json files hold (per-epoch history and final values)."""
    keys: set[str] = set()
    for job_dir in job_dirs:
        try:
            data = RunDir(job_dir).read_metrics() or {}
        except MetricsFileError:
            continue
        rows = [*(data.get("history") or []), data.get("final") or {}]
        for row in rows:
            if isinstance(row, dict):
                keys.update(k for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)))
    return keys


def check_metric(metric: str, jobs: list[Job], recorded: set[str]) -> None:
    """Refuse, before anything is written, a metric no job records: a typo, or a kind of example the dev
    split does not have (e.g. val/ex_hard on a sample without hard questions). Good summaries stay."""
    from text2sql.errors import UserError

    known = recorded | set(STANDARD_METRICS)
    if metric not in known:
        raise UserError(f"unknown metric {metric!r}; known: {', '.join(sorted(known))}")
    ok = [j for j in jobs if j.status == "ok"]
    if ok and all(j.best is None for j in ok):
        why = (f"no example of this kind ({metric.rsplit('_', 1)[-1]} questions) in the jobs' dev split"
               if metric.rsplit("/", 1)[-1].startswith("ex_") else "the successful jobs did not record it")
        raise UserError(f"no job has a value of {metric}: {why}; nothing written")


def _write_atomically(path: Path, write) -> None:
    """`write(tmp_path)`, then rename over `path`: a crash never leaves a half-written summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def build_report(sweep_dir: str | Path, metric: str = DEFAULT_METRIC, *, png: bool = True) -> Report:
    from text2sql.errors import UserError

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        nested = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and find_job_dirs(p))
        hint = f" (it holds sweep dirs: {', '.join(nested[:5])}{'…' if len(nested) > 5 else ''})" if nested else ""
        raise UserError(f"{sweep_dir}: no Hydra jobs found (no sub-directory with .hydra/ or metrics.json){hint}")
    jobs = [read_job(d, metric) for d in job_dirs]
    check_metric(metric, jobs, recorded_metrics(job_dirs))
    swept = swept_keys(jobs, _declared_sweep_keys(sweep_dir))
    ranked = rank(jobs)
    files = {name: sweep_dir / name for name in SUMMARY_FILES}
    text = markdown(sweep_dir, ranked, swept, metric)
    _write_atomically(files["summary.md"], lambda p: p.write_text(text))
    _write_atomically(files["summary.csv"], lambda p: write_csv(p, ranked, swept, metric))
    if png:
        title = f"{sweep_dir.parent.name}/{sweep_dir.name}"
        _write_atomically(files["summary.png"], lambda p: plot(p, ranked, swept, metric, title=title))
    else:
        files.pop("summary.png")
    return Report(sweep_dir, metric, ranked, swept, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("multirun_dir", metavar="MULTIRUN_DIR",
                        help="one Hydra sweep dir, e.g. multirun/2026-01-31/12-00-00 (holds 0/, 1/, ...)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="history/final key to rank by, higher is better (default: %(default)s)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="rows to print; the files always hold every job (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")


def _print_table(report: Report, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    short = _short(report.metric)
    n_ok = sum(j.status == "ok" for j in report.jobs)
    table = Table(title=f"{report.sweep_dir}: {len(report.jobs)} jobs, {n_ok} ok — top {min(top, len(report.jobs))}",
                  title_justify="left")
    for col in ["#", "job", *report.swept, f"best {short}", "epoch", "train loss", "val loss", "wall", "status"]:
        table.add_column(col, justify="left" if col in ("job", "status") else "right",
                         overflow="fold" if col == "status" else "ellipsis")
    for i, j in enumerate(report.jobs[:top], 1):
        status = j.status if not j.error else f"{j.status}: {j.error}"
        table.add_row(str(i), j.name, *[_fmt(j.overrides.get(k)) for k in report.swept], _fmt(j.best),
                      "" if j.best_epoch is None else str(j.best_epoch), _fmt(j.final_loss), _fmt(j.val_loss),
                      _fmt_time(j.wall_time_s), f"[red]{status}[/red]" if j.status != "ok" else status)
    console = Console()
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in report.files.values()))


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise ValueError("--top must be >= 0")
    report = build_report(args.multirun_dir, args.metric, png=not args.no_plot)
    _print_table(report, args.top)
    return 0
