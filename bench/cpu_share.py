"""CPU training beside busy processes: the default run's epoch time idle / one hog / two hogs, with libgomp's default
waiting (before), never spinning (passive) and the defaults of text2sql/machine/threads.py (after: a waiting OpenMP
thread spins 10,000 times on idle cores, 100 times beside a busy one (`hardware.spin_count=auto`, chosen at start
from /proc/stat), then sleeps; torch threads at most the usable CPUs, less those other processes kept busy at
start), side by side.

    python bench/cpu_share.py [--hogs 0,1,2] [--sides before,passive,after] [--repeat 1] [-- OVERRIDES...]

Measuring a new box (the goals of issue 29: after <= 1.1x before idle, <= 1.15x one_thread beside one hog):

    python bench/cpu_share.py --hogs 0,1 --sides before,after,one_thread --repeat 2

A hog is one single-threaded busy Python process (`while True: pass`), started before the run and killed after
it. Sides, each a `python train.py` process (model=tiny on the sample, the default run):

- before:     libgomp's default (`hardware.wait_policy=null hardware.spin_count=null`: ~300,000 spins);
- passive:    OMP_WAIT_POLICY=PASSIVE (`hardware.wait_policy=PASSIVE hardware.spin_count=null`: no spinning);
- after:      the defaults (GOMP_SPINCOUNT chosen at start: 10000 idle, 100 busy; threads = usable CPUs less the
              busy ones);
- one_thread: the defaults with OMP_NUM_THREADS=1;
- spin<N>:    the defaults with `hardware.spin_count=N`.

The epoch is cut to its first N steps (`trainer.limit_train_batches`, default 48 of 188) so a side takes well
under a minute on busy cores; s/step is what compares. The sides alternate within each hog level. The 1-minute
load average before each run is recorded: on a machine shared with other jobs, "idle" means no hog of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchjson import RESULTS, write_json  # noqa: E402

REPO = HERE.parent
LIBGOMP_DEFAULT = ["hardware.wait_policy=null", "hardware.spin_count=null"]
SIDES = {"before": ({}, LIBGOMP_DEFAULT), "passive": ({}, ["hardware.wait_policy=PASSIVE", "hardware.spin_count=null"]),
         "after": ({}, []), "one_thread": ({"OMP_NUM_THREADS": "1"}, [])}
BASE = ["logger=none", "trainer.max_epochs=1", "eval.limit=32", "trainer.limit_val_batches=2",
        "data.val_loss_limit=32"]


def side_setup(side: str) -> tuple[dict, list[str]]:
    """`spin<N>`: the defaults with `hardware.spin_count=N` (a waiting thread spins N times, then sleeps)."""
    if side in SIDES:
        return SIDES[side]
    if re.fullmatch(r"spin\d+", side):
        return {}, [f"hardware.spin_count={side[4:]}"]
    raise SystemExit(f"unknown side {side!r}: one of {', '.join(SIDES)} or spin<N>")


def run_side(side: str, steps: int, overrides: list[str], cache: Path) -> dict:
    extra_env, side_overrides = side_setup(side)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra_env, WANDB_MODE="disabled", TEXT2SQL_CACHE=str(cache), PYTHONPATH=str(REPO))
    run_dir = Path(tempfile.mkdtemp(prefix=f"cpu_share_{side}_"))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *BASE, f"trainer.limit_train_batches={steps}",
                           f"data.train_limit={steps * 16}", *side_overrides, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{side}: train.py failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    threads = re.search(r"CPU threads: .*", proc.stdout + proc.stderr)
    return {"run_s": round(metrics["wall_time_s"], 1), "process_s": round(wall, 1), "load_before": round(load, 2),
            "s_per_step": round(metrics["wall_time_s"] / steps, 3), "threads_line": threads.group(0) if threads else ""}


def hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def summary(results: dict, sides: list[str], steps: int) -> dict:
    def best(h, s):
        return min(r["run_s"] for r in results[h][s])

    levels = sorted(results, key=int)
    one = "1" if "1" in results else levels[-1]
    out = {"compares": f"`python train.py` (model=tiny, sample; first {steps} steps of an epoch + EX on 32) beside "
                       f"{one} busy process(es): after (GOMP_SPINCOUNT auto: 10000 idle, 100 busy; threads = usable "
                       "CPUs less those busy at start) vs before "
                       "(libgomp's default waiting); run s, best of the repeats"}
    if {"before", "after"} <= set(sides):
        out.update(ours=f"{best(one, 'after'):.0f} s", baseline=f"{best(one, 'before'):.0f} s",
                   ratio=round(best(one, "before") / best(one, "after"), 2), ratio_label="before / after")
    if "0" in results and {"before", "after"} <= set(sides):  # goal: <= 1.1 (issue 29)
        out["idle_after_over_before"] = round(best("0", "after") / best("0", "before"), 2)
    if "1" in results and {"one_thread", "after"} <= set(sides):  # goal: <= 1.15
        out["one_hog_after_over_one_thread"] = round(best("1", "after") / best("1", "one_thread"), 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hogs", default="0,1,2")
    ap.add_argument("--sides", default="before,passive,after")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--steps", type=int, default=48, help="training steps of the epoch (default: %(default)s)")
    ap.add_argument("--json", default=str(RESULTS / "cpu_share.json"), help='"": write nothing')
    ap.add_argument("overrides", nargs="*", help="more train.py overrides for every side")
    args = ap.parse_args(argv)
    sides = args.sides.split(",")
    cache = Path(os.environ.get("TEXT2SQL_CACHE") or tempfile.mkdtemp(prefix="cpu_share_cache_"))
    run_side("after", 2, args.overrides, cache)  # build the sample and the tiny model once, outside the timing
    results: dict[str, dict[str, list]] = {}
    for n in args.hogs.split(","):
        busy = hogs(int(n))
        try:
            for _ in range(args.repeat):
                for side in sides:
                    r = run_side(side, args.steps, args.overrides, cache)
                    results.setdefault(n, {}).setdefault(side, []).append(r)
                    print(f"hogs {n} {side:10s} run {r['run_s']:6.1f} s  process {r['process_s']:6.1f} s  "
                          f"load before {r['load_before']:5.2f}  {r['threads_line']}", flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    if args.json:  # "" (the README test): print only, never over the committed results
        path = write_json(args.json, {"steps": args.steps, "sides": sides, "results": results,
                                      "summary": summary(results, sides, args.steps)})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
