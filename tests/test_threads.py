"""CPU runs that share cores (text2sql/machine/threads.py): how OpenMP threads wait is set before torch is imported,
torch threads never exceed the CPUs this process may use, and an explicit setting always wins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from text2sql.machine import threads
from text2sql.machine.threads import (SPIN_BUSY, SPIN_IDLE, auto_spin_count, busy_cpus, cgroup_cpus, openmp_wait,
                                       preset_wait_policy, set_wait_policy, threads_for, usable_cpus)
from text2sql.errors import ConfigError

CPU = {"accelerator": "cpu", "devices": 1, "threads": None, "wait_policy": None, "spin_count": 100}


@pytest.mark.parametrize("cpu_max,expected", [("200000 100000", 2), ("150000 100000", 2), ("max 100000", None),
                                              ("garbage", None), (None, None)])
def test_cgroup_quota(tmp_path, cpu_max, expected):
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cgroup_cpus(tmp_path) == expected


def test_usable_cpus_follows_the_affinity_mask():
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    code = "from text2sql.machine.threads import usable_cpus; print(usable_cpus())"
    one = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert one.stdout.strip() == "1"


def test_openmp_waiting_for_cpu_runs_unless_the_user_chose():
    env: dict = {}
    assert set_wait_policy(CPU, env) == "GOMP_SPINCOUNT=100" and env == {"GOMP_SPINCOUNT": "100"}
    env = {}
    assert set_wait_policy({**CPU, "accelerator": "auto"}, env) == "GOMP_SPINCOUNT=100"  # auto may be a GPU yet
    env = {}
    assert set_wait_policy({**CPU, "wait_policy": "passive", "spin_count": None}, env) == "OMP_WAIT_POLICY=PASSIVE"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for hardware, env in [({**CPU, "accelerator": "gpu"}, {}),             # a GPU run: untouched
                          ({**CPU, "spin_count": None}, {}),                # both null: libgomp's default
                          (CPU, {"OMP_WAIT_POLICY": "ACTIVE"}),            # the user's variables win, either one
                          ({**CPU, "wait_policy": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"})]:
        before = dict(env)
        said = set_wait_policy(hardware, env)
        assert env == before and said == (" ".join(f"{k}={v}" for k, v in env.items()) or "libgomp's default")


def test_bad_openmp_settings_are_one_line():
    for hardware, words in [({**CPU, "wait_policy": "sleepy"}, "hardware.wait_policy=sleepy: choose PASSIVE"),
                            ({**CPU, "spin_count": -1}, "hardware.spin_count=-1: a whole number"),
                            ({**CPU, "spin_count": "lots"}, "hardware.spin_count=lots: a whole number")]:
        with pytest.raises(ConfigError, match=words):
            set_wait_policy(hardware, {})


def test_the_config_check_refuses_bad_openmp_settings():
    """The same lines come from `check_config`, which train.py runs before the machine set-up."""
    from hydra import compose, initialize_config_dir

    from text2sql.config.schema import check_config

    for override, words in [("hardware.wait_policy=sleepy", "hardware.wait_policy=sleepy: choose PASSIVE"),
                            ("hardware.spin_count=-1", "hardware.spin_count=-1: a whole number"),
                            ("hardware.spin_count=lots", "hardware.spin_count=lots: a whole number")]:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["hardware=cpu", override])
        with pytest.raises(ConfigError, match=words):
            check_config(cfg)


def test_verbs_use_the_cpu_presets_waiting():
    """`predict` / `ask` / `merge` have no composed config: they apply conf/hardware/cpu.yaml's keys."""
    assert preset_wait_policy() == {"accelerator": "auto", "wait_policy": None, "spin_count": "auto"}


def _stat(path, cpus):  # /proc/stat with per-CPU (user, idle) ticks
    path.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n" + "".join(f"cpu{i} {u} 0 0 {d} 0 0 0 0 0 0\n"
                                                          for i, (u, d) in enumerate(cpus)) + "intr 1 2 3\n")


@pytest.mark.parametrize("after,affinity,expected", [
    ([(100, 200), (100, 200)], {0, 1}, 0.0),     # both CPUs idle over the sample
    ([(200, 100), (100, 200)], {0, 1}, 1.0),     # one CPU busy the whole time (another process's)
    ([(200, 100), (200, 100)], {0, 1}, 2.0),
    ([(200, 100), (100, 200)], {1}, 0.0),        # the busy CPU is outside this process's affinity mask
])
def test_busy_cpus_counts_the_usable_cpus_other_processes_keep_busy(tmp_path, after, affinity, expected):
    stat = tmp_path / "stat"
    _stat(stat, [(100, 100), (100, 100)])
    busy, count = busy_cpus(0.0, stat, affinity, sleep=lambda s: _stat(stat, after))
    assert count == len(affinity) and busy == pytest.approx(expected, abs=0.05)
    assert busy_cpus(0.0, tmp_path / "missing", affinity) is None


def test_auto_spin_count_spins_long_on_idle_cores_and_short_beside_busy_ones(monkeypatch):
    """Issue 29: 100 spins cost 1.27-1.46x on idle cores, 10,000 cost 1.6x beside one busy process."""
    assert auto_spin_count(lambda: (0.1, 2)) == (SPIN_IDLE, "auto: 0.1 of 2 usable CPU(s) busy outside this run "
                                                            "at start -> idle")
    assert auto_spin_count(lambda: (1.0, 2))[0] == SPIN_BUSY == 100
    assert auto_spin_count(lambda: None) == (SPIN_BUSY, "auto: busy CPUs unknown (no /proc/stat)")
    monkeypatch.setattr(threads, "auto_spin_count", lambda sample: (SPIN_IDLE, "auto: 0.0 of 2 usable CPU(s) busy"))
    env: dict = {}
    said = set_wait_policy({**CPU, "spin_count": "auto"}, env)
    assert env == {"GOMP_SPINCOUNT": "10000", threads.WHY_VAR: "auto: 0.0 of 2 usable CPU(s) busy"}
    assert said == "GOMP_SPINCOUNT=10000 (auto: 0.0 of 2 usable CPU(s) busy)"
    assert openmp_wait(env) == said  # what the run's "CPU threads" log line ends with
    for hardware, env in [({**CPU, "spin_count": "auto"}, {"GOMP_SPINCOUNT": "5"}),   # the user's variable wins
                          ({**CPU, "spin_count": "auto", "wait_policy": "PASSIVE"}, {}),  # never spins: no choice
                          ({**CPU, "spin_count": "auto", "accelerator": "gpu"}, {})]:
        before = dict(env)
        set_wait_policy(hardware, env)
        assert {k: v for k, v in env.items() if k != "OMP_WAIT_POLICY"} == before


def test_thread_count_is_a_share_of_the_usable_cpus():
    assert threads_for(CPU, default=16, env={}, cpus=2) == 2               # a 2-CPU mask on a 16-core box
    assert threads_for(CPU, default=2, env={}, cpus=8) == 2                # never above torch's own count
    assert threads_for({**CPU, "devices": 2}, default=4, env={}, cpus=4) == 2   # two CPU processes on 4 CPUs
    assert threads_for({**CPU, "devices": 4}, default=4, env={}, cpus=2) == 1
    assert threads_for({**CPU, "threads": 3}, default=2, env={}, cpus=2) == 3   # hardware.threads wins
    assert threads_for(CPU, default=2, env={"OMP_NUM_THREADS": "1"}, cpus=2) is None  # so does the variable
    assert threads_for({**CPU, "accelerator": "gpu"}, default=2, env={}, cpus=2) is None


HOOK = """
import os, sys, runpy
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = " ".join(f"{k}={os.environ.get(k)}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))
        return None
sys.meta_path.insert(0, Spy())
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path("train.py", run_name="__main__")
finally:
    print("SEEN", seen.get("torch", "not imported"))
"""


@pytest.mark.slow  # ~10 s each on idle cores, 40 s on busy ones: the import of torch and Hydra
@pytest.mark.parametrize("env,args,expected", [
    ({}, [], r"OMP_WAIT_POLICY=None GOMP_SPINCOUNT=(100|10000)\n"),  # auto: which one depends on the load
    ({"OMP_WAIT_POLICY": "ACTIVE"}, [], "OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=None"),
    ({}, ["hardware.wait_policy=PASSIVE", "hardware.spin_count=null"], "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=None"),
])
def test_train_py_sets_openmp_waiting_before_torch_loads(tmp_path, env, args, expected):
    """The real entry point (hardware=auto imports torch to look for a GPU): the variables are in place when
    torch is first imported; `dry_run=true` stops before any data or weights load."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run([sys.executable, "-c", HOOK, "dry_run=true", *args, f"hydra.run.dir={tmp_path}"],
                          cwd=REPO_ROOT, env={**base, **env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(f"SEEN {expected}", proc.stdout), proc.stdout[-500:]
    assert json.loads((tmp_path / "dry_run.json").read_text())


def test_a_bad_spin_count_stops_train_py_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "hardware.spin_count=-5", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: hardware.spin_count=-5: a whole number of spins >= 0, auto (chosen at start from the busy CPUs) or "
        "null (libgomp's default)"], proc.stderr


def test_busy_cpus_at_start_leave_their_share_of_threads(monkeypatch):
    """Beside one busy process, two threads on two CPUs took 2.1x one thread's time (bench/cpu_share.py, AMD EPYC,
    2026-12-06): spin_count=auto's measurement also takes the busy CPUs out of the thread count."""
    monkeypatch.setattr(threads, "busy_cpus", lambda: (1.0, 2))
    env: dict = {}
    said = set_wait_policy({**CPU, "spin_count": "auto"}, env)
    assert {k: env[k] for k in ("GOMP_SPINCOUNT", threads.BUSY_VAR)} == {"GOMP_SPINCOUNT": "100", threads.BUSY_VAR: "1.0"}
    assert "-> busy" in said and "-> busy" in env[threads.WHY_VAR]
    cpu = {**CPU, "accelerator": "cpu"}
    assert threads_for(cpu, 8, env, cpus=2) == 1 and threads_for(cpu, 8, {}, cpus=2) == 2
    assert threads_for({**cpu, "threads": 2}, 8, env, cpus=2) == 2  # an explicit count wins
    assert threads_for(cpu, 8, {**env, "OMP_NUM_THREADS": "2"}, cpus=2) is None  # so does the user's variable
    monkeypatch.setattr(threads, "busy_cpus", lambda: (0.1, 2))
    idle: dict = {}
    set_wait_policy({**CPU, "spin_count": "auto"}, idle)
    assert idle["GOMP_SPINCOUNT"] == "10000" and threads.BUSY_VAR not in idle and threads_for(cpu, 8, idle, cpus=2) == 2
