"""Several processes, one run: which rank this process is, and one Hydra run dir shared by all ranks of a job.

Two launchers start ranks > 0 differently:
- Lightning (`hardware.devices=2`) re-runs `train.py` for them. Its own command line repeats the whole argv, so
  a child of a `-m` sweep would run the whole sweep in a dir of its own. Rank 0 therefore hands its children
  the job itself (its overrides and its run dir) in `TEXT2SQL_RANK_JOB`, and `rank_argv` turns the child's argv
  into exactly that job. After the job, `one_job` waits for the children and undoes the process group and the
  environment the launcher and strategy set (MASTER_PORT, RANK, ...), so the next job of a sweep launches its own
  ranks.
- torchrun (or any launcher that starts every rank) runs `train.py` once per rank; each would compose its own
  time-stamped dir. Rank 0 publishes its run (or sweep) dir in the launcher's rendezvous store and `rank_argv`
  makes the other ranks wait for it and use it.
Ranks > 0 keep their own log file (`train_rank<r>.log`) and write no `.hydra/`; rank 0 alone writes outputs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

JOB_ENV = "TEXT2SQL_RANK_JOB"  # {"dir": run dir, "overrides": [...]} of the job rank 0 is running
STORE_TIMEOUT_S = 600
# what Lightning's launcher and DeepSpeed set for one job's world (and our job spec): undone after the job
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE",
               "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", JOB_ENV)


def global_rank() -> int:
    """This process's rank (0 when alone): Lightning's once a strategy set it up, else the launcher's env."""
    module = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(module, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _is_multirun(argv: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv[1:])


def _store():
    """The torchrun agent's rendezvous store (the TCP store every worker's process group also joins)."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=STORE_TIMEOUT_S))


def _store_key(kind: str) -> str:
    return f"text2sql/{kind}/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _can_share() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _config_flags(argv: list[str]) -> list[str]:
    """The `--config-name X`-style flags of a command line (a job's overrides do not record them)."""
    kept, args = [], iter(argv[1:])
    for arg in args:
        if arg in _CONFIG_FLAGS:
            kept += [arg, next(args, "")]
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS:
            kept.append(arg)
    return kept


def rank_argv(argv: list[str]) -> list[str]:
    """The command line this process should run so that it joins rank 0's job and run dir (unchanged on rank 0
    and when alone). Called by train.py before Hydra parses the command line."""
    local_rank = os.environ.get("LOCAL_RANK")
    job = os.environ.get(JOB_ENV)
    if job and local_rank not in (None, "0") and not _under_torchrun():  # a rank that Lightning started
        spec = json.loads(job)
        return [argv[0], *_config_flags(argv), *spec["overrides"], f'hydra.run.dir="{spec["dir"]}"',
                "hydra.output_subdir=null", f"hydra.job.name=train_rank{local_rank}"]
    if not _under_torchrun() or int(os.environ.get("RANK", "0")) == 0:
        return argv
    rank = os.environ["RANK"]
    argv = [*argv, "hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
    kind = "sweep" if _is_multirun(argv) else "run"  # (a given dir may hold ${now:...} too: always share)
    if not _can_share():
        log.warning("rank %s: no launcher store to learn rank 0's run dir from; this rank composes its own", rank)
        return argv
    shared = _store().get(_store_key(kind)).decode()  # waits until rank 0 has composed its config
    return [a for a in argv if not a.startswith(f"hydra.{kind}.dir=")] + [f'hydra.{kind}.dir="{shared}"']


def _publish_run_dir(hc) -> None:
    """Rank 0 under torchrun: tell the other ranks the run (or sweep) dir Hydra composed for it."""
    from hydra.types import RunMode

    if not _under_torchrun() or int(os.environ.get("RANK", "0")) != 0 or not _can_share():
        return
    kind = "sweep" if hc.mode == RunMode.MULTIRUN else "run"
    directory = hc.sweep.dir if kind == "sweep" else hc.runtime.output_dir
    _store().set(_store_key(kind), str(Path(hc.runtime.cwd, directory)))


@contextmanager
def one_job(trainer):
    """Around `trainer.fit` of one Hydra job: share the run dir with the other ranks; afterwards, if Lightning
    launched them, wait for them and reset the process group and the launcher's env for the next job."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    _publish_run_dir(hc)
    launcher_parent = "LOCAL_RANK" not in os.environ and not _under_torchrun()
    saved_env = {key: os.environ.get(key) for key in LAUNCH_VARS}
    os.environ[JOB_ENV] = json.dumps({"dir": hc.runtime.output_dir, "overrides": list(hc.overrides.task)})
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
        children = list(procs)
        # Lightning's child-process observer thread shares this list and SIGKILLs the whole process (this sweep
        # included) once a child exits non-zero, as the kill below makes it: from here on the children are ours.
        procs.clear()
        for proc in children:
            if failed:
                proc.kill()
            try:
                proc.wait(timeout=STORE_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # a rank stuck after rank 0 finished: do not hang the sweep
                proc.kill()
                proc.wait()
        if launcher_parent:  # Lightning set MASTER_PORT, RANK, ... and a process group for this job's world
            _reset_distributed()
            restore_env(saved_env)
        bad = [p.returncode for p in children if p.returncode]
        if bad and not failed:
            raise RuntimeError(f"a rank that Lightning launched exited with status {bad[0]}; see train_rank*.log")


def restore_env(saved: dict[str, str | None]) -> None:
    """Put `os.environ` back to `saved` ({key: value, or None for unset}), e.g. LAUNCH_VARS after a job's world."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _reset_distributed() -> None:
    """Forget this job's process group, so the next job of a sweep can start a world of its own."""
    import importlib

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        importlib.reload(groups)  # DeepSpeed caches groups of the destroyed world in module globals
