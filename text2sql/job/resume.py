"""One run across resumes: the same run dir, the same W&B run id, the whole metrics history.

`python train.py ckpt_path=RUN_DIR` (or `RUN_DIR/checkpoints/last.ckpt`, or any checkpoint in it) continues
that run in its own dir with the overrides it was started with (new ones on the command line win);
`resume=auto` resumes from the run dir's `last.ckpt` when there is one (a requeued SLURM job); a finished run
says so instead of training again. Imports no torch: it runs before Hydra composes the config.
"""

from __future__ import annotations

import logging
from pathlib import Path

from text2sql.errors import ResumeError
from text2sql.job.run_dir import LAST, RunDir

log = logging.getLogger(__name__)



class RunFinished(Exception):
    """The checkpoint to resume is the end of the run: there is nothing left to train."""


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
    found = RunDir.find(ckpt, with_checkpoints=True)
    if found is None:
        return argv
    from omegaconf import OmegaConf

    run = found.path
    recorded = OmegaConf.to_container(OmegaConf.load(found.hydra_dir / "overrides.yaml")) or []
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
