"""CPU runs that share their cores well: OpenMP threads that stop spinning soon when they wait, and no more torch
threads than this process may use.

Why: libgomp's default lets a thread that waits for work spin about 300,000 times (a few ms) before it sleeps. On
cores that another busy process also uses (a test run, a second training, other users of a shared node), the
spinning threads take the time slices the work needs. bench/cpu_share.py (issue 21), the default run on 2 cores:
a whole epoch beside one busy process took 177 s with libgomp's default, 33 s with a 100-spin wait; beside two,
425 s against 32 s (96-step cuts: 52-100 s vs 18 s, 35-400 s vs 23 s). ``OMP_WAIT_POLICY=PASSIVE`` (never spin)
helps as much under load. On idle cores every wait that ends in sleep costs a wake-up: a whole epoch took 18-21 s
with libgomp's default, 20-22 s with 100 spins or PASSIVE (medians of six: 19.1 s, 21.3 s). No count removes both
costs: 3,000 or more spins match the default idle but lose 25-80 % beside one busy process. The default here is
``GOMP_SPINCOUNT=100`` (libgomp's own choice when it knows its threads outnumber the CPUs): ~11 % on idle cores
for a run that stays at its fair share beside a busy process (2 of 3 processes on 2 cores: 1.5x idle, 30 s).
A second box (issue 29, idle Xeon 2 cores) paid 1.27-1.46x for 100 spins idle, where 10,000 spins ran 0.86x of
libgomp's default; beside one busy process 10,000 spins cost 1.6x. So no fixed count serves both, and the default
(``spin_count: auto``) looks at the machine once, at start: ``busy_cpus`` samples /proc/stat for 0.15 s (this
process sleeps meanwhile) and counts the usable CPUs other processes keep busy. Half a CPU or more busy: 100 spins
(``SPIN_BUSY``); idle: 10,000 (``SPIN_IDLE``). The choice and its reason end the run's "CPU threads" log line.
libgomp reads both once, when torch loads it, so they are set before torch is imported; the thread count can
change later (``torch.set_num_threads``). torch's own default count is the machine's physical cores, blind to a
CPU affinity mask (taskset, SLURM's cpusets) or a cgroup quota (containers).

An explicit setting always wins: the ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` / ``OMP_NUM_THREADS`` environment
variables, then the ``hardware.wait_policy`` / ``hardware.spin_count`` / ``hardware.threads`` keys
(conf/hardware/*.yaml). Never imports torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from text2sql.config.schema import AUTO_SPINS as AUTO
from text2sql.config.schema import check_openmp

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
SPIN_VAR = "GOMP_SPINCOUNT"  # libgomp's spins before a waiting thread sleeps (LLVM's libomp ignores it)
THREADS_VAR = "OMP_NUM_THREADS"
CPU_ACCELERATORS = ("cpu", "auto")  # before hardware=auto is resolved a CPU run cannot be told from a GPU one
SPIN_IDLE = 10_000  # idle cores: as fast as libgomp's default (0.86-1.0x), 1.6x if a busy process comes later
SPIN_BUSY = 100  # a busy CPU beside the run: its fair share (libgomp's own count when threads outnumber CPUs)
BUSY_CPUS = 0.5  # this many CPUs busy outside the run (of the usable ones) makes the machine "busy"
SAMPLE_S = 0.15
BUSY_VAR = "TEXT2SQL_BUSY_CPUS"  # CPUs other processes kept busy at start (set with spin_count=auto): fewer threads
WHY_VAR = "TEXT2SQL_SPIN_WHY"  # why spin_count=auto chose GOMP_SPINCOUNT, for the threads log line (beside it in env)


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


def set_wait_policy(hardware: Mapping, env: dict | None = None) -> str:
    """Before torch is imported, for a CPU run: `hardware.wait_policy` (OMP_WAIT_POLICY) and `hardware.spin_count`
    (GOMP_SPINCOUNT; "auto": `auto_spin_count`) into the environment, unless the user set either variable (then
    both are theirs). Returns how OpenMP threads wait, in words (`openmp_wait`)."""
    env = os.environ if env is None else env
    policy, spins = hardware.get("wait_policy"), hardware.get("spin_count")
    check_openmp(policy, spins)
    user_chose = WAIT_POLICY_VAR in env or SPIN_VAR in env
    if not user_chose and hardware.get("accelerator") in CPU_ACCELERATORS:
        if policy is not None:
            env[WAIT_POLICY_VAR] = str(policy).upper()
        if spins == AUTO and str(policy).upper() != "PASSIVE":  # PASSIVE never spins: nothing to choose
            seen = busy_cpus()
            spins, why = auto_spin_count(lambda: seen)
            env[WHY_VAR] = why
            if seen is not None and seen[0] >= BUSY_CPUS:  # and torch threads leave those CPUs to their owners
                env[BUSY_VAR] = f"{seen[0]:.1f}"
        if spins is not None and spins != AUTO:
            env[SPIN_VAR] = str(spins)
    return openmp_wait(env)


def _cpu_times(stat: Path, cpus: set[int] | None) -> tuple[int, int]:
    """(busy, total) jiffies of the `cpus` lines of /proc/stat (all CPUs when None); iowait counts as idle."""
    busy = total = 0
    for line in stat.read_text().splitlines():
        name, *ticks = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()) or (cpus is not None and int(name[3:]) not in cpus):
            continue
        values = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy, total


def busy_cpus(seconds: float = SAMPLE_S, stat: Path = Path("/proc/stat"), cpus: set[int] | None = None,
              sleep=time.sleep) -> tuple[float, int] | None:
    """(CPUs kept busy by other processes, CPUs looked at) over `seconds`, from /proc/stat's per-CPU lines for the
    CPUs this process may run on (it sleeps meanwhile, before torch or any thread of ours starts). None where
    /proc/stat cannot be read (not Linux)."""
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except AttributeError:
            cpus = None
    try:
        busy0, total0 = _cpu_times(stat, cpus)
        sleep(seconds)
        busy1, total1 = _cpu_times(stat, cpus)
    except (OSError, ValueError, IndexError):
        return None
    count = len(cpus) if cpus else max(1, os.cpu_count() or 1)
    if total1 <= total0:
        return None
    return count * (busy1 - busy0) / (total1 - total0), count


def auto_spin_count(sample=busy_cpus) -> tuple[int, str]:
    """`hardware.spin_count=auto`: (spins, why). Idle usable CPUs: SPIN_IDLE; BUSY_CPUS or more of them busy with
    other processes: SPIN_BUSY (a longer spin takes the time slices the run needs); unknown: SPIN_BUSY."""
    seen = sample()
    if seen is None:
        return SPIN_BUSY, "auto: busy CPUs unknown (no /proc/stat)"
    busy, count = seen
    state = "busy" if busy >= BUSY_CPUS else "idle"
    spins = SPIN_BUSY if state == "busy" else SPIN_IDLE
    return spins, f"auto: {busy:.1f} of {count} usable CPU(s) busy outside this run at start -> {state}"


def openmp_wait(env: Mapping | None = None) -> str:
    """How OpenMP threads wait under `env`: the variables that decide it (and why, when `auto_spin_count` chose
    the spins), or libgomp's default."""
    env = os.environ if env is None else env
    said = " ".join(f"{var}={env[var]}" for var in (WAIT_POLICY_VAR, SPIN_VAR) if var in env) or "libgomp's default"
    why = env.get(WHY_VAR) if SPIN_VAR in env else None
    return f"{said} ({why})" if why else said


def threads_for(hardware: Mapping, default: int, env: Mapping | None = None, cpus: int | None = None) -> int | None:
    """Torch threads per process for a resolved CPU `hardware` node, None to leave torch's count alone:
    OMP_NUM_THREADS set (torch read it), or not a CPU run. `default`: torch's count; without a setting each of
    the node's processes gets an equal share of the usable CPUs, at most `default`, less the CPUs other processes
    kept busy at start (`BUSY_VAR`, measured with spin_count=auto): two threads on two CPUs beside one busy process
    take twice as long as one thread (bench/cpu_share.py, 2026-12-06)."""
    env = os.environ if env is None else env
    if hardware.get("accelerator") != "cpu" or THREADS_VAR in env:
        return None
    if hardware.get("threads"):
        return int(hardware["threads"])
    devices = hardware.get("devices")
    per_node = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    cpus = cpus or usable_cpus()
    if env.get(BUSY_VAR):
        cpus = max(1, cpus - round(float(env[BUSY_VAR])))
    return max(1, min(default, cpus // max(per_node, 1)))


def preset_wait_policy(preset: str = "cpu") -> dict:
    """The `hardware` keys a verb without a composed config (`predict`, `ask`, `merge`) applies before torch is
    imported: conf/hardware/<preset>.yaml's `wait_policy` and `spin_count`, with accelerator "auto" (the device
    is not known yet; waiting only matters to CPU work). Read with OmegaConf, which does not import torch."""
    from omegaconf import OmegaConf

    from text2sql.config.paths import conf_dir

    node = OmegaConf.load(conf_dir() / "hardware" / f"{preset}.yaml")
    return {"accelerator": "auto", "wait_policy": node.get("wait_policy"), "spin_count": node.get("spin_count")}


def set_torch_threads(hardware: Mapping) -> str:
    """After hardware is resolved: apply `threads_for`; one line saying what the run uses and why."""
    import torch

    threads = threads_for(hardware, torch.get_num_threads())
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    why = (f"{THREADS_VAR}={os.environ[THREADS_VAR]}" if THREADS_VAR in os.environ
           else "hardware.threads" if hardware.get("threads") else f"{usable_cpus()} usable CPU(s)"
           + (f", {os.environ[BUSY_VAR]} busy outside this run at start" if os.environ.get(BUSY_VAR) else ""))
    return f"CPU threads: {torch.get_num_threads()} ({why}), OpenMP waiting: {openmp_wait()}"
