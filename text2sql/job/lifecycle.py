"""What every training job does around `fit`: keep the run's record (metrics.json), isolate failures, and run
the clean-ups registered for the job's end (the W&B run's finish, which tracking/ registers: job/ imports nothing
from tracking/, tracking/ reads job's RunDir and EpochLog).

Kept out of train.py so that file reads as the recipe, top to bottom.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text2sql.job.history import EpochLog
from text2sql.job.run_dir import RunDir
from text2sql.job.stop import EXIT_CODE, RunStopped, stop_on_signals

log = logging.getLogger(__name__)

WORST = float("-inf")
_AT_JOB_END: list = []  # clean-ups for the end of the current job (at_job_end)


def at_job_end(fn) -> None:
    """Call `fn()` once when the current job ends, however it ends (e.g. finishing its W&B run, so the next job of
    a multirun does not log into it)."""
    if fn not in _AT_JOB_END:
        _AT_JOB_END.append(fn)


def _end_job() -> None:
    while _AT_JOB_END:
        _AT_JOB_END.pop(0)()


def job_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def flat_hparams(cfg: DictConfig) -> dict:
    """The resolved config, plus the swept/overridden keys at top level so dashboards can group by them."""
    from hydra.core.hydra_config import HydraConfig

    params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params


def run_job(cfg: DictConfig, train_fn) -> float:
    """Run `train_fn(cfg, record)` with the run's `EpochLog`, always leave metrics.json, and return the metric for
    sweepers.

    In a multirun a failing job (bad value, OOM, NaN loss) is recorded and returns the worst value so the
    sweep goes on; a single run re-raises so the user sees the error.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from text2sql.job.ranks import global_rank

    out_dir = job_dir()
    rank = global_rank()  # several ranks share out_dir: rank 0 alone writes metrics.json and prints
    record = EpochLog(RunDir(out_dir), cfg.optimized_metric, rank0=rank == 0)
    metric = cfg.optimized_metric
    try:
        with stop_on_signals():
            train_fn(cfg, record)
    except RunStopped as stop:
        _stopped(record, stop)
    except Exception as err:  # noqa: BLE001 - recorded, then re-raised or turned into the worst value
        if _user_error(err) is not None and _discard_unused(out_dir):  # a typo before any work: no run dir left
            raise SystemExit(f"error: {_user_error(err)}") from None
        shown = _user_error(err) or err  # the user error, not Hydra's InstantiationException around it
        message = f"{type(shown).__name__}: {shown}".splitlines()[0]
        (out_dir / ("error.txt" if rank == 0 else f"error_rank{rank}.txt")).write_text(traceback.format_exc(),
                                                                                     encoding="utf-8")
        record.save("failed", message)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed, the sweep goes on: %s", message)
            return WORST
        cause = _user_error(err)
        if cause is not None:
            raise SystemExit(f"error: {cause}") from None  # one line, no traceback: the user can fix it
        raise
    finally:
        _end_job()
    saved = record.save("ok")
    final = saved["final"].get(metric)
    if rank == 0:
        print(f"run dir: {out_dir}")
    if saved["best"] is None:
        return WORST
    best = saved["best"][metric]
    if rank == 0:
        print(f"{metric}: {final:.4f} at the last epoch, best {best:.4f} at epoch {saved['best']['epoch']}")
    # The best epoch is what ModelCheckpoint keeps and what `text2sql report` ranks by: sweepers see it too.
    return float(best)


def _stopped(record: EpochLog, stop: RunStopped) -> None:
    """Record an interrupted/preempted run, say how to resume it, and exit with 128 + the signal number."""
    record.save(stop.status, step=stop.step)
    if record.rank0:
        run = record.run
        where = "a checkpoint at this step" if stop.saved else "the last checkpoint"
        resumable = run.last_checkpoint.exists()
        how = f"resume from {where}: python train.py ckpt_path={run.path}" if resumable else \
            "no checkpoint yet: start it again"
        print(f"{stop.status} at step {stop.step}; {how}", flush=True)
    raise SystemExit(EXIT_CODE[stop.signum])


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix; shown as one line instead of a traceback."""
    from text2sql.errors import CheckpointWriteError, UserError

    return (FileNotFoundError, UserError, CheckpointWriteError)


def _discard_unused(out_dir: Path) -> bool:
    """Remove the dir Hydra made for a single run (not one named with hydra.run.dir) that stopped on a user error
    before writing anything but Hydra's own files: ten typos leave no ten `failed` run dirs (issue 29)."""
    import shutil

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from text2sql.job.ranks import global_rank

    hydra = HydraConfig.get()
    named = any(o.lstrip("+").startswith("hydra.run.dir=") for o in hydra.overrides.hydra)
    ours = [p for p in out_dir.iterdir() if p.name not in (".hydra", f"{hydra.job.name}.log")]
    if hydra.mode == RunMode.MULTIRUN or named or global_rank() != 0 or ours:
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    return True


def _user_error(err: BaseException) -> BaseException | None:
    """The user error behind `err` (Hydra wraps errors raised inside `instantiate`), or None."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, user_errors()):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None
