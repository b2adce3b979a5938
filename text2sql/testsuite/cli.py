"""`text2sql testsuite build --data DIR --out DIR`: a distilled test suite for a dataset's databases.

Then score predictions on it with `text2sql evaluate --test-suite --gold OUT/dev_gold.sql --pred pred.sql
--db OUT/database` (add `--style bird` for a BIRD suite).
"""

from __future__ import annotations

import argparse

from text2sql.eval.execute import WORKERS_HELP
from text2sql.testsuite.build import BuildOptions

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build a distilled test suite for every database of a dataset",
                           description="Generate neighbour databases of each database (same schema, values sampled "
                                       "and perturbed from the original) and keep the fewest that tell each gold "
                                       "query apart from its near-miss mutants (Zhong, Yu and Klein, EMNLP 2020).")
    build.add_argument("--data", required=True, metavar="DIR",
                       help="dataset dir: Spider's layout (also `prepare --from-sqlite` output), BIRD's, SParC's, "
                            "CoSQL's or Chase's")
    build.add_argument("--out", required=True, metavar="DIR", help="output dir (must not exist, or be empty)")
    build.add_argument("--split", choices=("dev", "train", "both"), default="dev",
                       help="whose gold queries the suite is distilled for (default dev)")
    build.add_argument("--per-db", type=int, default=BuildOptions.per_db, metavar="N",
                       help="candidate neighbours tried per database; the suite keeps the fewest that kill the most "
                            f"mutants (default {BuildOptions.per_db})")
    build.add_argument("--mutants", type=int, default=BuildOptions.mutants, metavar="K",
                       help=f"mutants per gold query (default {BuildOptions.mutants})")
    build.add_argument("--cover", type=int, default=BuildOptions.cover, metavar="C",
                       help="kept neighbours that must kill each mutant, where that many can (default "
                            f"{BuildOptions.cover}; 1: the fewest neighbours, which miss more of the near-misses the "
                            "distillation never saw)")
    build.add_argument("--seed", type=int, default=0, help="seed of neighbours and mutants (default 0)")
    build.add_argument("--timeout", type=float, default=10.0, help="per-query timeout in seconds (default 10)")
    build.add_argument("--workers", type=int, default=None,
                       help=f"worker processes (default: {WORKERS_HELP}; 0 = in-process)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.epilog = "actions:\n  " + build.format_usage().replace("usage: ", "", 1).strip()  # `testsuite --help`
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    from text2sql.errors import UserError
    from text2sql.testsuite.build import BuildOptions, build_suite

    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")
    opts = BuildOptions(split=args.split, per_db=args.per_db, seed=args.seed, mutants=args.mutants, cover=args.cover,
                        timeout=args.timeout, workers=args.workers, progress=not args.no_progress)
    build_suite(args.data, args.out, opts)
    print(f"test suite written to {args.out}; score predictions with: text2sql evaluate --test-suite "
          f"--gold {args.out}/{'dev' if args.split != 'train' else 'train'}_gold.sql --pred PRED --db "
          f"{args.out}/database")
    return 0
