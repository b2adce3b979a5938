"""What every training job does around `fit`: name its W&B run, record metrics.json, isolate failures.

Kept out of train.py so that file reads as the recipe, top to bottom.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

WORST = float("-inf")


def job_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def wandb_identity(cfg: DictConfig) -> dict[str, str]:
    """Run name and group: in a sweep, group = the sweep dir's name and name = the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = hc.job.override_dirname
    if hc.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hc.sweep.dir)
        group = f"{sweep_dir.parent.name}_{sweep_dir.name}" if sweep_dir.parent.name else sweep_dir.name
        return {"name": overrides or f"job{hc.job.num}", "group": group}
    return {"name": overrides or f"{cfg.model.name}-{cfg.peft.method}", "group": None}


def flat_hparams(cfg: DictConfig) -> dict:
    """The resolved config, plus the swept/overridden keys at top level so dashboards can group by them."""
    from hydra.core.hydra_config import HydraConfig

    params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params


def write_metrics(out_dir: Path, history: list[dict], metric: str, status: str, error: str | None,
                  wall_time_s: float, write: bool = True) -> dict:
    """metrics.json: the final value of every metric, the per-epoch history and the best epoch."""
    final = {}
    for row in history:
        final.update({k: v for k, v in row.items() if k != "epoch"})
    scored = [r for r in history if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    best = max(scored, key=lambda r: r[metric]) if scored else None
    record = {
        "final": final,
        "history": history,
        "best": {metric: best[metric], "epoch": best["epoch"]} if best else None,
        "status": status,
        "error": error,
        "wall_time_s": round(wall_time_s, 2),
    }
    if not write:
        return record
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "metrics.json")
    return record


def run_job(cfg: DictConfig, train_fn) -> float:
    """Run `train_fn(cfg) -> history`, always leave metrics.json, and return the metric for sweepers.

    In a multirun a failing job (bad value, OOM, NaN loss) is recorded and returns the worst value so the
    sweep goes on; a single run re-raises so the user sees the error.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from text2sql.ranks import global_rank

    out_dir = job_dir()
    start = time.time()
    if cfg.get("ckpt_path") or cfg.get("resume"):  # a resumed run: its time so far counts too
        from text2sql.resume import earlier_wall_time

        start -= earlier_wall_time(out_dir)
    history: list[dict] = []
    metric = cfg.optimized_metric
    try:
        history = train_fn(cfg, history)
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised or turned into the worst value
        shown = _user_error(err) or err  # the user error, not Hydra's InstantiationException around it
        message = f"{type(shown).__name__}: {shown}".splitlines()[0]
        rank = global_rank()  # several ranks share out_dir: rank 0 alone writes metrics.json and prints
        (out_dir / ("error.txt" if rank == 0 else f"error_rank{rank}.txt")).write_text(traceback.format_exc(),
                                                                                     encoding="utf-8")
        write_metrics(out_dir, history, metric, "failed", message, time.time() - start, write=rank == 0)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed, the sweep goes on: %s", message)
            return WORST
        cause = _user_error(err)
        if cause is not None:
            raise SystemExit(f"error: {cause}") from None  # one line, no traceback: the user can fix it
        raise
    finally:
        _finish_wandb()
    rank0 = global_rank() == 0
    record = write_metrics(out_dir, history, metric, "ok", None, time.time() - start, write=rank0)
    final = record["final"].get(metric)
    if rank0:
        print(f"run dir: {out_dir}")
    if record["best"] is None:
        return WORST
    best = record["best"][metric]
    if rank0:
        print(f"{metric}: {final:.4f} at the last epoch, best {best:.4f} at epoch {record['best']['epoch']}")
    # The best epoch is what ModelCheckpoint keeps and what `text2sql report` ranks by: sweepers see it too.
    return float(best)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix; shown as one line instead of a traceback."""
    from text2sql.errors import UserError
    from text2sql.data.spider import SpiderDataError
    from text2sql.resume import CheckpointWriteError, ResumeError

    return (SpiderDataError, FileNotFoundError, UserError, CheckpointWriteError, ResumeError)


def _user_error(err: BaseException) -> BaseException | None:
    """The user error behind `err` (Hydra wraps errors raised inside `instantiate`), or None."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, user_errors()):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _finish_wandb() -> None:
    """End the W&B run of this job; otherwise the next job of a multirun logs into it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
