"""`text2sql report MULTIRUN_DIR`: rank the jobs of one Hydra sweep dir by their best execution accuracy.

The verb writes three files into the sweep dir:

- ``summary.md``  a markdown table ranked by the best value of ``--metric`` (default ``val/execution_accuracy``):
  job, the swept values, best value and its epoch, final train loss, per-hardness EX at the best epoch,
  wall time; failed jobs last with their error;
- ``summary.csv`` the same rows, raw numbers;
- ``summary.png`` the metric per epoch for every job, and the best value against each swept parameter.

and prints the top rows (80 columns suffice). Reading is :mod:`text2sql.sweep.jobs`, the tables
:mod:`text2sql.sweep.tables`, the picture :mod:`text2sql.sweep.plot`. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from text2sql.atomic import atomic_path
from text2sql.errors import MetricsFileError
from text2sql.eval.metric_names import EX, EX_BY_HARDNESS, EXACT_MATCH, TRAIN_LOSS, VAL_LOSS
from text2sql.sweep.jobs import Job, declared_log_keys, declared_sweep_keys, find_job_dirs, rank, read_job, swept_keys
from text2sql.job.run_dir import RunDir
from text2sql.sweep.tables import markdown, print_summary, write_csv

SUMMARY_FILES = ("summary.md", "summary.csv", "summary.png")
# Metrics every training job may log; a name outside these and the jobs' own keys is a typo.
STANDARD_METRICS = (EX, *EX_BY_HARDNESS.values(), EXACT_MATCH, VAL_LOSS, TRAIN_LOSS)


@dataclass
class Report:
    sweep_dir: Path
    metric: str
    jobs: list[Job]           # ranked
    swept: list[str]
    files: dict[str, Path]


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
               if metric in EX_BY_HARDNESS.values() else "the successful jobs did not record it")
        raise UserError(f"no job has a value of {metric}: {why}; nothing written")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    from text2sql.errors import UserError

    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    job_dirs = find_job_dirs(sweep_dir)
    if not job_dirs:
        nested = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and find_job_dirs(p))
        hint = f" (it holds sweep dirs: {', '.join(nested[:5])}{'…' if len(nested) > 5 else ''})" if nested else ""
        raise UserError(f"{sweep_dir}: no Hydra jobs found (no sub-directory with .hydra/ or metrics.json){hint}")
    return job_dirs


def build_report(sweep_dir: str | Path, metric: str = EX, *, png: bool = True) -> Report:
    sweep_dir = Path(sweep_dir)
    job_dirs = _job_dirs(sweep_dir)
    jobs = [read_job(d, metric) for d in job_dirs]
    check_metric(metric, jobs, recorded_metrics(job_dirs))
    swept = swept_keys(jobs, declared_sweep_keys(sweep_dir))
    ranked = rank(jobs)
    files = {name: sweep_dir / name for name in SUMMARY_FILES}
    text = markdown(sweep_dir, ranked, swept, metric)
    with atomic_path(files["summary.md"]) as tmp:  # a crash never leaves a half-written summary
        tmp.write_text(text)
    with atomic_path(files["summary.csv"]) as tmp:
        write_csv(tmp, ranked, swept, metric)
    if png:
        from text2sql.sweep.plot import plot

        title, log_keys = f"{sweep_dir.parent.name}/{sweep_dir.name}", declared_log_keys(sweep_dir)
        with atomic_path(files["summary.png"]) as tmp:
            plot(tmp, ranked, swept, metric, title, log_keys)
    else:
        files.pop("summary.png")
    return Report(sweep_dir, metric, ranked, swept, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("multirun_dir", metavar="MULTIRUN_DIR",
                        help="one Hydra sweep dir, e.g. multirun/2026-01-31/12-00-00 (holds 0/, 1/, ...)")
    parser.add_argument("--metric", default=EX,
                        help="history/final key to rank by, higher is better (default: %(default)s)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="rows to print; the files always hold every job (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise ValueError("--top must be >= 0")
    report = build_report(args.multirun_dir, args.metric, png=not args.no_plot)
    print_summary(report.sweep_dir, report.jobs, report.swept, report.metric, args.top, list(report.files.values()))
    return 0
