"""Everything a training run does with Weights & Biases: the run's name and group, one W&B run id per run dir,
starting the logger (offline when no server answers), and finishing the run between sweep jobs.

W&B stays optional: nothing here imports `wandb` at module level, and `logger=csv` / `logger=none` never import it.
"""

from __future__ import annotations

import logging
import os
import random
import string
from pathlib import Path

from omegaconf import DictConfig

from text2sql.atomic import atomic_path
from text2sql.job.run_dir import RunDir

log = logging.getLogger(__name__)


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


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run dir, created on first use: every process of the run logs into one W&B run."""
    path = RunDir(run_dir).wandb_id_file
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))  # as wandb's ids
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(run_id + "\n")
    return run_id


def make_loggers(cfg, run_dir: Path, identity: dict) -> list:
    """Instantiate the configured loggers; W&B gets the run dir's id and falls back offline without a server."""
    from hydra.utils import instantiate

    from text2sql.job.lifecycle import at_job_end

    loggers = []
    for lg in (cfg.get("logger") or {}).values():
        kwargs = {k: v for k, v in identity.items() if lg.get(k, "") is None}
        if str(lg.get("_target_", "")).endswith("WandbLogger"):
            kwargs["id"] = wandb_run_id(run_dir)
            at_job_end(finish_wandb)  # the next job of a multirun must not log into this run
            loggers.append(_start_wandb(lg, kwargs, run_dir))
            drop_unset_wandb_options(loggers[-1:])
        else:
            loggers.append(instantiate(lg, **kwargs))
    return loggers


def _start_wandb(lg, kwargs: dict, run_dir: Path):
    """Start the W&B run now. Online without a reachable server (or login): one warning, then offline.

    The wait is W&B's own `init_timeout` (env `WANDB_INIT_TIMEOUT`, 30 s here unless set); the offline run
    keeps the same id, so `wandb sync` later puts it into the same W&B run.
    """
    from hydra.utils import instantiate

    mode = str(lg.get("mode") or os.environ.get("WANDB_MODE", "online"))
    if mode in ("offline", "dryrun", "disabled"):
        return instantiate(lg, **kwargs)
    if "WANDB_INIT_TIMEOUT" not in os.environ:
        kwargs = {**kwargs, "settings": {"init_timeout": 30.0}}
    logger = instantiate(lg, **kwargs)
    try:
        logger.experiment  # noqa: B018 - wandb.init happens here, bounded by init_timeout
        return logger
    except Exception as err:  # noqa: BLE001 - CommError, UsageError (no login), timeouts: all mean "no server"
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1, quiet=True)
        wandb.teardown()  # the W&B service still holds the run id of the failed attempt
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("W&B is unreachable (%s): logging offline into %s; upload later with `wandb sync %s`",
                    reason[:200], run_dir / "wandb", run_dir / "wandb" / "offline-run-*")
        kwargs.pop("settings", None)
        offline = instantiate(lg, **{**kwargs, "mode": "offline"})
        offline.experiment  # noqa: B018
        return offline


def drop_unset_wandb_options(loggers) -> None:
    """Lightning's WandbLogger passes `anonymous=None` to `wandb.init`, which makes W&B warn on every run
    that the setting is deprecated; an option left unset is simply not passed."""
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous", "") is None:
            del init["anonymous"]


def finish_wandb() -> None:
    """End the W&B run of this job; otherwise the next job of a multirun logs into it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
