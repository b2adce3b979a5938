"""Time to a user error's one line: this tree vs a baseline git ref, the same bad commands side by side.

User errors that need no torch (a bad Spider path, a wrong type, an out-of-range value) should fail in about a
second, before torch/Lightning are imported. The baseline (default `bacd400`, before typed configs) is checked out
into a temporary git worktree and run with the same interpreter, cache and overrides.

    python bench/bench_startup_errors.py [--baseline REF] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "bad Spider path": ["dataset=spider", "dataset.root=/no/such/spider"],
    "optim.lr=abc": ["optim.lr=abc"],
    "trainer.max_epochs=abc": ["trainer.max_epochs=abc"],
    "optim.lr=-1": ["optim.lr=-1"],
}


def time_case(tree: Path, overrides: list[str], cache: Path, run_dir: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "TEXT2SQL_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={run_dir}"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return elapsed, (f"{len(lines)} lines: " + (lines[-1][:70] if lines else "(none)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="bacd400", help="git ref to compare with (default: before typed configs)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=REPO, check=True,
                       capture_output=True)
        try:
            print(f"| case | baseline {args.baseline} (s) | this tree (s) | speed-up | this tree says |")
            print("|---|---:|---:|---:|---|")
            for name, overrides in CASES.items():
                times = {}
                for label, tree in (("base", base), ("new", REPO)):
                    runs = [time_case(tree, overrides, Path(tmp) / "cache", Path(tmp) / "run")
                            for _ in range(args.repeat)]
                    times[label] = (statistics.median(r[0] for r in runs), runs[-1][1])
                b, n = times["base"][0], times["new"][0]
                print(f"| {name} | {b:.1f} | {n:.1f} | {b / n:.1f}x | {times['new'][1]} |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
