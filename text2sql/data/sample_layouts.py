"""`text2sql sample --layout L --out DIR`: the generated sample written in another dataset's layout.

One verb for every layout the project reads besides Spider's own (which `dataset=sample` writes by itself): BIRD's
(`text2sql.data.bird_sample`) and the multi-turn ones (`text2sql.data.sample_multiturn`), so each dataset path
trains, evaluates and resumes on this machine without downloads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from text2sql.errors import UserError

# layout -> (what --n-train / --n-dev count, their defaults)
LAYOUTS = {"bird": ("questions", 3000, 200), "sparc": ("interactions", 600, 60),
           "cosql": ("interactions", 600, 60), "chase": ("interactions", 600, 60)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="sparc", help="file layout (default sparc)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist yet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=None,
                        help="train questions (bird, default 3000) or interactions (multi-turn, default 600)")
    parser.add_argument("--n-dev", type=int, default=None,
                        help="dev questions (bird, default 200) or interactions (multi-turn, default 60)")


def run(args: argparse.Namespace) -> int:
    unit, n_train, n_dev = LAYOUTS[args.layout]
    n_train = n_train if args.n_train is None else args.n_train
    n_dev = n_dev if args.n_dev is None else args.n_dev
    if Path(args.out).exists():
        raise UserError(f"--out {args.out} already exists; pick a new directory")
    if n_train < 1 or n_dev < 1:
        raise UserError("--n-train and --n-dev must be at least 1")
    if args.layout == "bird":
        from text2sql.data.bird_sample import write_bird_sample

        out = write_bird_sample(args.out, args.seed, n_train, n_dev)
    else:
        from text2sql.data.sample_multiturn import generate_multiturn_sample

        out = generate_multiturn_sample(args.out, args.layout, args.seed, n_train, n_dev)
    print(f"{args.layout} sample: {n_train} train / {n_dev} dev {unit} in {out}; train with: "
          f"python train.py dataset={args.layout} dataset.root={out}")
    return 0
