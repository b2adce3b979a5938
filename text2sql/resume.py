"""One run across resumes: the same run dir, the same W&B run id, the whole metrics history.

`python train.py ckpt_path=RUN_DIR` (or `RUN_DIR/checkpoints/last.ckpt`, or any checkpoint in it) continues
that run in its own dir with the overrides it was started with (new ones on the command line win);
`resume=auto` resumes from the run dir's `last.ckpt` when there is one (a requeued SLURM job); a finished run
says so instead of training again. Imports no torch: it runs before Hydra composes the config.
"""

from __future__ import annotations

import json
import logging
import os
import random
import string
from pathlib import Path

log = logging.getLogger(__name__)

LAST = "last.ckpt"
WANDB_ID_FILE = Path("wandb") / "run_id"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file size limit); the previous checkpoint file is intact."""


class ResumeError(ValueError):
    """A resume setting that cannot work (shown as one line)."""


class RunFinished(Exception):
    """The checkpoint to resume is the end of the run: there is nothing left to train."""


def run_dir_of(path: str | os.PathLike) -> Path | None:
    """The run dir holding `path` (a run dir, its checkpoints/ or a checkpoint in it), or None."""
    p = Path(path).expanduser().resolve()
    for candidate in (p, *p.parents[:3]):
        if (candidate / ".hydra" / "config.yaml").is_file() and (candidate / "checkpoints").exists():
            return candidate
    return None


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def continue_run_argv(argv: list[str]) -> list[str]:
    """Rewrite `train.py` arguments so that `ckpt_path=` of a run continues that run in its own dir.

    The run's own overrides (`.hydra/overrides.yaml`) come first, then the ones given now, which replace a
    recorded override of the same key; `hydra.run.dir` is set to the run dir. Multiruns and runs that
    already name their dir are left alone.
    """
    if any(a in ("-m", "--multirun") or a.startswith("hydra.run.dir=") or a.startswith("-") for a in argv):
        return argv
    ckpt = next((a.partition("=")[2] for a in argv if _key(a) == "ckpt_path"), None)
    if not ckpt or ckpt in ("last", "null", "None"):
        return argv
    run = run_dir_of(ckpt)
    if run is None:
        return argv
    from omegaconf import OmegaConf

    recorded = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml")) or []
    given = {_key(a) for a in argv}
    kept = [o for o in recorded if _key(o) not in given]
    return [*kept, *argv, f"hydra.run.dir={run}"]


def checkpoint_to_resume(ckpt_path: str | None, resume: str | None, run_dir: Path) -> str | None:
    """The checkpoint `fit` resumes from: an explicit path, a run dir's last one, `last`, or `resume=auto`."""
    if resume not in (None, "never", "auto"):
        raise ResumeError(f"resume={resume!r}: use resume=auto (resume from {run_dir / 'checkpoints' / LAST} "
                         "when it exists) or leave it unset")
    last = run_dir / "checkpoints" / LAST
    if ckpt_path in (None, "null"):
        if resume == "auto":
            if last.exists():
                log.info("resume=auto: resuming from %s", last)
                return str(last)
            log.info("resume=auto: no checkpoint in %s yet, starting the run", last.parent)
        return None
    if ckpt_path == "last":
        if not last.exists():
            raise FileNotFoundError(f"ckpt_path=last: no {last}; give the run dir, e.g. ckpt_path=outputs/DATE/TIME")
        return str(last)
    path = Path(ckpt_path).expanduser()
    if (path / ".hydra").is_dir() or (path / "checkpoints").is_dir():  # a run dir (a DeepSpeed checkpoint is a dir too)
        if not (path / "checkpoints" / LAST).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: the run has no checkpoints/{LAST} yet (nothing to resume)")
        path = path / "checkpoints" / LAST
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint")
    return str(path)


def check_not_finished(ckpt: str, max_epochs: int | None, max_steps: int = -1) -> None:
    """Raise RunFinished when `ckpt` was saved after the run's last epoch (Lightning would run it again)."""
    import torch

    if Path(ckpt).is_dir():  # a DeepSpeed checkpoint dir: Lightning's own handling applies
        return
    state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    step = state.get("global_step", 0)
    fit = state.get("loops", {}).get("fit_loop", {})
    epoch_end = fit.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    trained = fit.get("epoch_progress", {}).get("current", {}).get("processed", 0) if epoch_end else None
    if (max_epochs is not None and max_epochs >= 0 and trained is not None and trained >= max_epochs) or (
            max_steps is not None and max_steps > 0 and step >= max_steps):
        raise RunFinished(f"the run is finished: {ckpt} has trained {trained} epochs ({step} steps) of "
                          f"trainer.max_epochs={max_epochs}; raise trainer.max_epochs to train it further")


def earlier_history(run_dir: Path) -> list[dict]:
    """The per-epoch rows a previous process of this run wrote to metrics.json (empty when there are none)."""
    try:
        return list(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("history") or [])
    except (OSError, ValueError):
        return []


def earlier_wall_time(run_dir: Path) -> float:
    """Seconds the earlier processes of this run spent (metrics.json), so wall_time_s covers the whole run."""
    try:
        return float(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("wall_time_s") or 0.0)
    except (OSError, ValueError, TypeError):
        return 0.0


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run dir, created on first use: every process of the run logs into one W&B run."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))  # as wandb's ids
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(path)
    return run_id


def make_loggers(cfg, run_dir: Path, identity: dict) -> list:
    """Instantiate the configured loggers; W&B gets the run dir's id and falls back offline without a server."""
    from hydra.utils import instantiate

    loggers = []
    for lg in (cfg.get("logger") or {}).values():
        kwargs = {k: v for k, v in identity.items() if lg.get(k, "") is None}
        if str(lg.get("_target_", "")).endswith("WandbLogger"):
            kwargs["id"] = wandb_run_id(run_dir)
            loggers.append(_start_wandb(lg, kwargs, run_dir))
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
