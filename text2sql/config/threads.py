"""CPU runs that share their cores well: OpenMP threads that sleep while they wait, and no more torch threads
than this process may use.

Why: libgomp's default wait policy lets a thread that waits for work spin for a while before it sleeps. On
cores that another busy process also uses (a test run, a second training, other users of a shared node), the
spinning threads take the time slices the work needs: the default 2-thread CPU run beside one busy process
took 98 s an epoch, 46 s with ``OMP_WAIT_POLICY=PASSIVE``, 36 s on idle cores (issue 21; bench/cpu_share.py
measures it). libgomp reads the policy once, when torch loads it, so it is set before torch is imported; the
thread count can change later (``torch.set_num_threads``). torch's own default count is the machine's
physical cores, blind to a CPU affinity mask (taskset, SLURM's cpusets) or a cgroup quota (containers).

An explicit setting always wins: the ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` environment variables, then
the ``hardware.wait_policy`` / ``hardware.threads`` keys (conf/hardware/*.yaml). Never imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
THREADS_VAR = "OMP_NUM_THREADS"
CPU_ACCELERATORS = ("cpu", "auto")  # before hardware=auto is resolved a CPU run cannot be told from a GPU one


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPUs a cgroup v2 quota allows (`cpu.max` "200000 100000" -> 2), None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    return max(1, min(cpus, quota) if quota else cpus)


def set_wait_policy(hardware: Mapping, env: dict | None = None) -> str | None:
    """Before torch is imported: `hardware.wait_policy` into the environment for a CPU run unless the user set
    the variable; returns the policy in effect (None: libgomp's default)."""
    env = os.environ if env is None else env
    if WAIT_POLICY_VAR in env:
        return env[WAIT_POLICY_VAR]
    policy = hardware.get("wait_policy")
    if policy and hardware.get("accelerator") in CPU_ACCELERATORS:
        env[WAIT_POLICY_VAR] = str(policy).upper()
        return env[WAIT_POLICY_VAR]
    return None


def threads_for(hardware: Mapping, default: int, env: Mapping | None = None, cpus: int | None = None) -> int | None:
    """Torch threads per process for a resolved CPU `hardware` node, None to leave torch's count alone:
    OMP_NUM_THREADS set (torch read it), or not a CPU run. `default`: torch's count; without a setting each of
    the node's processes gets an equal share of the usable CPUs, at most `default`."""
    env = os.environ if env is None else env
    if hardware.get("accelerator") != "cpu" or THREADS_VAR in env:
        return None
    if hardware.get("threads"):
        return int(hardware["threads"])
    devices = hardware.get("devices")
    per_node = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    return max(1, min(default, (cpus or usable_cpus()) // max(per_node, 1)))


def preset_wait_policy(preset: str = "cpu") -> dict:
    """The `hardware` keys a verb without a composed config (`predict`, `ask`, `merge`) applies before torch is
    imported: conf/hardware/<preset>.yaml's `wait_policy`, with accelerator "auto" (the device is not known yet;
    the policy only matters to CPU work). Read with OmegaConf, which does not import torch."""
    from omegaconf import OmegaConf

    from text2sql.config.paths import conf_dir

    return {"accelerator": "auto",
            "wait_policy": OmegaConf.load(conf_dir() / "hardware" / f"{preset}.yaml").get("wait_policy")}


def set_torch_threads(hardware: Mapping) -> str:
    """After hardware is resolved: apply `threads_for`; one line saying what the run uses and why."""
    import torch

    threads = threads_for(hardware, torch.get_num_threads())
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    why = (f"{THREADS_VAR}={os.environ[THREADS_VAR]}" if THREADS_VAR in os.environ
           else "hardware.threads" if hardware.get("threads") else f"{usable_cpus()} usable CPU(s)")
    policy = os.environ.get(WAIT_POLICY_VAR, "libgomp's default")
    return f"CPU threads: {torch.get_num_threads()} ({why}), OpenMP wait policy {policy}"
