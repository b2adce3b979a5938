"""The written forms of a sweep report: ``summary.md``, ``summary.csv`` and the console table.

The console table fits an 80-column terminal: swept keys are headed by their last name part (``optim.lr`` ->
``lr``), cells never wrap or elide, and a failed job's error is printed under the table on its own line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from text2sql.eval.metric_names import EX, EX_BY_HARDNESS
from text2sql.sweep.jobs import Job, _finite, fixed_overrides


def fmt(value: Any, digits: int = 4) -> str:
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


def short_name(metric: str) -> str:
    """Display name of a metric: val/execution_accuracy -> EX, val/ex_hard -> ex_hard."""
    return "EX" if metric == EX else metric.rsplit("/", 1)[-1]


def _levels(jobs: list[Job]) -> list[str]:
    """The hardness levels some job has an EX for, in the official order."""
    return [h for h in EX_BY_HARDNESS if any(h in j.hardness for j in jobs)]


def _columns(metric: str, swept: list[str], jobs: list[Job]) -> tuple[list[str], list[str]]:
    hardness = _levels(jobs)
    short = short_name(metric)
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
    hardness = _levels(ranked)
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
    hardness = _levels(ranked)
    n_ok = sum(j.status == "ok" for j in ranked)
    lines = [f"# Sweep `{sweep_dir.name}`", ""]
    lines.append(f"{len(ranked)} jobs ({n_ok} ok, {len(ranked) - n_ok} failed), ranked by the best `{metric}` "
                 f"over the epochs, ties by the lower final val loss (epoch numbers as in `predictions/epoch_<n>.jsonl`; "
                 f"per-hardness EX at the best epoch).")
    fixed = fixed_overrides(ranked, swept)
    if fixed:
        lines += ["", "Fixed overrides: " + " ".join(f"`{k}={fmt(v)}`" for k, v in fixed.items())]
    opt = _optuna_results(sweep_dir)
    if opt and "best_params" in opt:
        params = " ".join(f"`{k}={fmt(v)}`" for k, v in (opt.get("best_params") or {}).items())
        lines += ["", f"Optuna best trial: {params} -> {fmt(_finite(opt.get('best_value')))}"]
    lines += ["", "| " + " | ".join(_md_escape(c) for c in md_cols) + " |",
              "|" + "|".join("---:" if c not in ("job", "status") else "---" for c in md_cols) + "|"]
    for r in _rows(ranked, swept):
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        cells = [r["rank"], r["job"], *[fmt(v) for v in r["swept"]], fmt(r["best"]),
                 "" if r["best_epoch"] is None else r["best_epoch"], fmt(r["final_loss"]), fmt(r["val_loss"]),
                 *[fmt(r["hardness"].get(h)) for h in hardness], _fmt_time(r["wall"]), status]
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += ["", "![sweep summary](summary.png)", ""]
    return "\n".join(lines)



def column_names(keys: list[str]) -> list[str]:
    """Short unique headers for swept keys: the fewest trailing name parts that tell them apart."""
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names.append(name)
    return names


# Columns a narrow terminal loses first (the files keep them all).
_OPTIONAL_COLUMNS = ("wall", "val loss", "ep", "loss")


def _console_rows(jobs: list[Job], swept: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
    header = ["#", "job", *column_names(swept), f"best {short_name(metric)}", "ep", "loss", "val loss", "wall",
              "status"]
    rows = [[str(i), j.name, *[fmt(j.overrides.get(k)) for k in swept], fmt(j.best),
             "" if j.best_epoch is None else str(j.best_epoch), fmt(j.final_loss), fmt(j.val_loss),
             _fmt_time(j.wall_time_s), j.status] for i, j in enumerate(jobs, 1)]
    return header, rows


def console_table(jobs: list[Job], swept: list[str], metric: str, width: int):
    """A rich Table of `jobs` no wider than `width`: optional columns go before any cell is cut."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    header, rows = _console_rows(jobs, swept, metric)
    keep = list(range(len(header)))
    measure = Console(width=10_000)
    while True:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for k in keep:
            table.add_column(header[k], justify="left" if header[k] in ("job", "status") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*[f"[red]{row[k]}[/red]" if row[k] == "failed" else row[k] for k in keep])
        optional = [k for k in keep if header[k] in _OPTIONAL_COLUMNS]
        if measure.measure(table).maximum <= width or not optional:
            return table
        keep.remove(min(optional, key=lambda k: _OPTIONAL_COLUMNS.index(header[k])))


def print_summary(sweep_dir: Path, jobs: list[Job], swept: list[str], metric: str, top: int,
                  files: list[Path], console=None) -> None:
    """The top rows, then each shown failed job's error on its own line, then where the files are."""
    from rich.console import Console

    console = console or Console()
    n_ok = sum(j.status == "ok" for j in jobs)
    shown = jobs[:top]
    console.print(f"{sweep_dir}: {len(jobs)} jobs, {n_ok} ok; top {len(shown)} by {metric}", highlight=False)
    console.print(console_table(shown, swept, metric, console.width))
    for i, job in enumerate(shown, 1):
        if job.error:
            console.print(f"#{i} job {job.name} {job.status}: {job.error}", highlight=False, markup=False)
    names = ", ".join(p.name for p in files)
    console.print(f"wrote {names} in {files[0].parent}" if files else "wrote nothing", highlight=False)
