"""``text2sql evaluate``: execution accuracy of a prediction file against a gold file (official formats).

GOLD: one ``SQL<TAB>db_id`` per line (Spider's ``dev_gold.sql``); PRED: one SQL per line, aligned with GOLD
(DB-GPT-Hub's ``pred.sql``). Prints the official-style table (count and EX per hardness level) and the
count of each status; ``--out`` writes one JSON verdict per line, in order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from text2sql.errors import UserError as CliError

__all__ = ["add_arguments", "run", "read_gold", "read_pred"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gold", required=True, help="gold file: one 'SQL<TAB>db_id' per line")
    parser.add_argument("--pred", required=True, help="predictions: one SQL per line, aligned with --gold")
    parser.add_argument("--db", required=True, help="database dir holding <db_id>/<db_id>.sqlite")
    parser.add_argument("--plug-value", action="store_true",
                        help="also accept the prediction with the gold query's values plugged in")
    parser.add_argument("--keep-distinct", action="store_true", help="do not remove DISTINCT before executing")
    parser.add_argument("--test-suite", action="store_true",
                        help="test-suite mode: every *.sqlite file in a db folder must give the gold result")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-query timeout in seconds (default 30)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per CPU core; 0 = in-process)")
    parser.add_argument("--out", default=None, help="write one JSON verdict per line to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_gold(path: str | Path) -> list[tuple[str, str]]:
    """(sql, db_id) per non-empty line of an official gold file."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"gold file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        sql, sep, db_id = line.strip().rpartition("\t")
        if not sep or not sql.strip() or not db_id.strip():
            raise CliError(f"{path}:{n}: expected 'SQL<TAB>db_id'")
        out.append((sql.strip(), db_id.strip()))
    return out


def read_pred(path: str | Path) -> list[str]:
    """One prediction per line (an empty line is an empty prediction); a trailing newline ends the file.
    Like the official evaluator, only the text before a TAB is the SQL."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"prediction file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r").split("\t")[0].strip() for line in lines]


def run(args: argparse.Namespace) -> int:
    from text2sql.eval.execute import STATUSES, ExecutionEvaluator
    from text2sql.eval.metrics import table_rows

    gold = read_gold(args.gold)
    pred = read_pred(args.pred)
    if not gold:
        raise CliError(f"gold file is empty: {args.gold}")
    # tolerate only trailing empty lines in the prediction file
    while len(pred) > len(gold) and pred[-1] == "":
        pred.pop()
    if len(pred) != len(gold):
        raise CliError(f"line count mismatch: {args.gold} has {len(gold)} queries, {args.pred} has {len(pred)} lines")
    db_dir = Path(args.db)
    if not db_dir.is_dir():
        raise CliError(f"database directory not found: {db_dir}")
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, got {args.timeout}")

    items = [(db_id, g, p) for (g, db_id), p in zip(gold, pred)]
    with ExecutionEvaluator(db_dir, timeout=args.timeout, workers=args.workers, plug_value=args.plug_value,
                            keep_distinct=args.keep_distinct, test_suite=args.test_suite) as ev:
        verdicts = ev.evaluate(items, progress=not args.no_progress)

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for v in verdicts:
                f.write(json.dumps(v.to_dict(), ensure_ascii=False) + "\n")

    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = table_rows(verdicts)
    table = Table(title="EXECUTION ACCURACY" + (" (test suite)" if args.test_suite else ""))
    table.add_column("")
    for level, _, _ in rows:
        table.add_column(level, justify="right")
    table.add_row("count", *[str(c) for _, c, _ in rows])
    table.add_row("execution", *[f"{ex:.3f}" for _, _, ex in rows])
    console.print(table)
    counts = Counter(v.status for v in verdicts)
    st = Table(title="status")
    st.add_column("status")
    st.add_column("count", justify="right")
    for s in STATUSES:
        st.add_row(s, str(counts.get(s, 0)))
    console.print(st)
    if args.out:
        console.print(f"verdicts written to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from text2sql.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
