"""``summary.png``: the metric per epoch for every job (and val/loss beside it), then the best value against each
swept parameter, on a log axis when the values span an order of magnitude or the sweep searched them on one."""

from __future__ import annotations

import math
from pathlib import Path

from text2sql.eval.metric_names import VAL_LOSS
from text2sql.sweep.jobs import Job, _finite
from text2sql.sweep.tables import fmt, short_name

LOG_SPAN = 10.0  # max/min at or above which a positive parameter is drawn on a log axis (lr 1e-4..1e-3)


def log_axis(values: list[float], declared_log: bool = False) -> bool:
    """True for positive values that span an order of magnitude, or that the sweep searched on a log scale."""
    return bool(values) and min(values) > 0 and (declared_log or max(values) / min(values) >= LOG_SPAN)


def _job_label(job: Job, swept: list[str]) -> str:
    values = " ".join(f"{k.rsplit('.', 1)[-1]}={fmt(job.overrides.get(k))}" for k in swept)
    return f"{job.name}: {values}" if values else job.name


def _unit_ylim(ax, values: list[float]) -> None:
    """For a share in [0, 1] (EX): start the axis at 0, and keep it readable when every value is 0."""
    if values and all(0.0 <= v <= 1.0 for v in values):
        top = max(values)
        ax.set_ylim(-0.02 * max(top, 0.1), max(top * 1.08, 0.1))


def _epoch_axes(ax, title: str, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _metric_curves(ax, ranked: list[Job], swept: list[str], metric: str) -> None:
    plotted = 0
    for job in ranked:
        if job.history:
            epochs, values = zip(*sorted(job.history))
            ax.plot(epochs, values, marker="o", ms=3, lw=1.4, label=_job_label(job, swept))
            plotted += 1
    failed = sum(j.status != "ok" for j in ranked)
    _epoch_axes(ax, f"{short_name(metric)} per epoch" + (f" ({failed} failed job(s) not shown)" if failed else ""),
                metric)
    _unit_ylim(ax, [v for j in ranked for _, v in j.history])
    if plotted:
        ax.legend(fontsize=7, ncol=2 if plotted > 8 else 1, loc="best", frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no job recorded an epoch", ha="center", va="center", transform=ax.transAxes)


def _loss_curves(ax, ranked: list[Job], swept: list[str]) -> None:
    for job in ranked:
        if job.loss_history:
            epochs, values = zip(*sorted(job.loss_history))
            ax.plot(epochs, values, marker="o", ms=3, lw=1.4, label=_job_label(job, swept))
    _epoch_axes(ax, f"{VAL_LOSS} per epoch", VAL_LOSS)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _numeric_panel(ax, xs: list[float], ys: list[float], log: bool) -> None:
    ax.scatter(xs, ys, s=28, zorder=3)
    if log_axis(xs, log):
        ax.set_xscale("log")
    distinct = sorted(set(xs))
    if len(distinct) <= 6:  # a grid: tick exactly the swept values
        ax.set_xticks(distinct, [fmt(x) for x in distinct])
        ax.minorticks_off()
    # mean of the best values at each setting, to read a trend through the other swept keys
    means: dict[float, list[float]] = {}
    for x, y in zip(xs, ys):
        means.setdefault(x, []).append(y)
    mx = sorted(means)
    ax.plot(mx, [sum(means[x]) / len(means[x]) for x in mx], lw=1, alpha=0.6, color="gray", zorder=2,
            label="mean at each value")
    if len(means) < len(xs):
        ax.legend(fontsize=7, frameon=False, loc="best")


def _param_panel(ax, ranked: list[Job], key: str, metric: str, log: bool) -> None:
    ok = [j for j in ranked if j.best is not None]
    xs = [j.overrides.get(key) for j in ok]
    ys = [j.best for j in ok]
    short = short_name(metric)
    if xs and all(_finite(x) is not None for x in xs):
        _numeric_panel(ax, [float(x) for x in xs], ys, log)
    elif xs:
        cats = sorted({str(x) for x in xs})
        pos = {c: k for k, c in enumerate(cats)}
        ax.scatter([pos[str(x)] for x in xs], ys, s=28, zorder=3)
        ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=8)
    else:
        empty = "no successful job" if not any(j.status == "ok" for j in ranked) else f"no job has {short}"
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    _unit_ylim(ax, ys)
    ax.set_xlabel(key + (" (log)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"best {short}")
    ax.grid(alpha=0.3)


def plot(path: Path, ranked: list[Job], swept: list[str], metric: str, title: str,
         log_keys: set[str] = frozenset()) -> None:
    """Write the picture to `path` (PNG, whatever its suffix). `log_keys`: swept keys searched on a log scale."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    with_loss = any(j.loss_history for j in ranked)
    per_row = min(len(swept), 3) or 1                           # parameter subplots per row
    ncols = math.lcm(per_row, 2) if with_loss else per_row      # the top row splits in two when val/loss is there
    span = ncols // per_row                                     # grid columns per parameter subplot
    nrows = 1 + math.ceil(len(swept) / per_row)
    fig = plt.figure(figsize=(max(4.2 * per_row, 9.0 if with_loss else 6.0), 3.6 * nrows), constrained_layout=True)
    gs = GridSpec(nrows, ncols, figure=fig)
    _metric_curves(fig.add_subplot(gs[0, : ncols // 2] if with_loss else gs[0, :]), ranked, swept, metric)
    if with_loss:
        _loss_curves(fig.add_subplot(gs[0, ncols // 2:]), ranked, swept)
    for i, key in enumerate(swept):
        col = (i % per_row) * span
        _param_panel(fig.add_subplot(gs[1 + i // per_row, col: col + span]), ranked, key, metric, key in log_keys)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, format="png")  # path may be a temp name without .png
    plt.close(fig)
