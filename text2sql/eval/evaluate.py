"""``text2sql evaluate``: execution accuracy and/or exact set match of a prediction file against a gold file.

GOLD: one ``SQL<TAB>db_id`` per line (Spider's ``dev_gold.sql``, BIRD's ``dev.sql``); PRED: one SQL per line,
aligned with GOLD (DB-GPT-Hub's ``pred.sql``). ``--etype exec|match|all`` as the official tool (default ``exec``).
``--style spider|bird`` picks the dataset's EX rule (text2sql.eval.style), inferred from the files when not given.
A multi-turn gold file (SParC's / CoSQL's ``dev_gold.txt``) separates interactions with blank lines and so must
PRED; then question and interaction match are printed too (text2sql.eval.interaction). A questions file beside
GOLD (``epoch_N_questions.json`` beside ``epoch_N_gold.sql``, text2sql.eval.questions) is read as ``--questions``.
Prints the official-style table (count, EX and/or EM per hardness level, or per BIRD difficulty; "—" for an empty
level), the component F1s for ``match`` and the count of each status; ``--out`` writes one JSON line per example.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

from text2sql.config.paths import check_writable
from text2sql.errors import UserError
from text2sql.eval.execute import WORKERS_HELP

__all__ = ["add_arguments", "run", "read_gold", "read_pred"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gold", required=True,
                        help="gold file: one 'SQL<TAB>db_id' per line; multi-turn (SParC's / CoSQL's dev_gold.txt, "
                        "a run's epoch_N_gold.sql): a blank line after each interaction")
    parser.add_argument("--pred", required=True,
                        help="predictions: one SQL per line, aligned with --gold; for a multi-turn gold file, one "
                        "SQL per turn with a blank line after each interaction, as in the gold file (what "
                        "`text2sql predict` and a run's predictions/epoch_N_pred.sql write)")
    parser.add_argument("--db", required=True, help="database dir holding <db_id>/<db_id>.sqlite")
    parser.add_argument("--plug-value", action="store_true",
                        help="also accept the prediction with the gold query's values plugged in")
    parser.add_argument("--keep-distinct", action="store_true", help="do not remove DISTINCT before executing")
    parser.add_argument("--test-suite", action="store_true",
                        help="test-suite mode: every *.sqlite file in a db folder must give the gold result "
                             "(a suite from `text2sql testsuite build`; BIRD's: add --style bird)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-query timeout in seconds (default 30)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"worker processes (default: {WORKERS_HELP}; 0 = in-process)")
    parser.add_argument("--etype", choices=("exec", "match", "all"), default="exec",
                        help="exec: execution accuracy; match: exact set match (official component matching); "
                             "all: both (default exec)")
    parser.add_argument("--tables", default=None,
                        help="Spider tables.json for --etype match/all (default: beside --db, i.e. <db>/../tables.json)")
    parser.add_argument("--questions", default=None,
                        help="split JSON (e.g. dev.json) aligned with --gold: --out lines carry the question; "
                             "BIRD's gives each example's difficulty (default: the questions file a run writes "
                             "beside its gold, epoch_N_questions.json, else a dev.json beside --gold)")
    parser.add_argument("--style", choices=("spider", "bird"), default=None,
                        help="whose execution-accuracy rule: spider (bags of rows, column permutations, DISTINCT "
                             "dropped) or bird (set of rows, queries as written); default: bird when the split "
                             "JSON holds BIRD's SQL key or --db is a *_databases folder, else spider")
    parser.add_argument("--out", default=None, help="write one JSON verdict per line to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_gold(path: str | Path) -> list[tuple[str, str]]:
    """(sql, db_id) per non-empty line of an official gold file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gold file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        sql, sep, db_id = line.strip().rpartition("\t")
        if not sep or not sql.strip() or not db_id.strip():
            raise UserError(f"{path}:{n}: expected 'SQL<TAB>db_id'")
        if len(db_id.split()) > 1 and len(sql.split()) == 1:  # a db_id never holds spaces; a query does
            raise UserError(f"{path}:{n}: the columns look swapped ('{sql.strip()}<TAB>{db_id.strip()[:40]}...'): "
                            "a gold file holds 'SQL<TAB>db_id'")
        out.append((sql.strip(), db_id.strip()))
    return out


def read_pred(path: str | Path) -> list[str]:
    """One prediction per line (an empty line is an empty prediction); a trailing newline ends the file.
    Like the official evaluator, only the text before a TAB is the SQL."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prediction file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r").split("\t")[0].strip() for line in lines]


def _check_db_dir(db_dir: Path, db_ids: list[str], test_suite: bool) -> None:
    """None of the gold databases under --db: one error line (suggesting <db>/database when it has them);
    some missing: one warning line."""
    from text2sql.eval.execute import db_files

    wanted = sorted(set(db_ids))
    missing = [d for d in wanted if not db_files(db_dir, d, test_suite)]
    if len(missing) == len(wanted):
        hint = ""
        nested = db_dir / "database"
        if nested.is_dir() and any(db_files(nested, d, test_suite) for d in wanted):
            hint = f"; did you mean --db {nested}?"
        raise UserError(f"--db {db_dir} holds none of the {len(wanted)} gold databases "
                       f"(expected {db_dir}/<db_id>/<db_id>.sqlite){hint}")
    if missing:
        print(f"text2sql evaluate: warning: {len(missing)} of {len(wanted)} gold databases are missing under {db_dir} "
              f"(e.g. {missing[0]}); their examples count as db_missing", file=sys.stderr)


def _tables_path(args: argparse.Namespace, db_dir: Path) -> Path:
    if args.tables:
        path = Path(args.tables)
        if not path.is_file():
            raise UserError(f"tables file not found: {path}")
        return path
    for path in (db_dir.parent / "tables.json", db_dir / "tables.json"):
        if path.is_file():
            return path
    raise UserError(f"--etype {args.etype} needs Spider's tables.json: none beside {db_dir}; pass --tables PATH")


def _read_questions(path: str | Path, n: int) -> list[dict]:
    """The split JSON's records aligned with the gold file (their questions; BIRD's `SQL` and `difficulty`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"questions file not found: {path}") from None
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and "question" in d for d in data):
        raise UserError(f"{path}: expected a JSON array of examples with a 'question' (e.g. Spider's dev.json)")
    if len(data) != n:
        raise UserError(f"{path} has {len(data)} examples, the gold file has {n}")
    return data


def _split_records(args: argparse.Namespace, n: int) -> list[dict] | None:
    """--questions, else the questions file a run wrote beside its gold (text2sql.eval.questions), else a dev.json
    beside the gold file when it aligns with it (BIRD's dev/ folder); None: none."""
    from text2sql.eval.questions import questions_beside

    if args.questions:
        return _read_questions(args.questions, n)
    if questions_beside(args.gold).is_file():
        args.questions = str(questions_beside(args.gold))  # as if given: --out lines carry its questions too
        return _read_questions(args.questions, n)
    beside = Path(args.gold).parent / "dev.json"
    try:
        return _read_questions(beside, n) if beside.is_file() else None
    except UserError:
        return None  # not this gold file's split: the style is then inferred from --db


def _infer_style(args: argparse.Namespace, records: list[dict] | None, db_dir: Path) -> tuple[str, str]:
    """(style, why): --style, else BIRD's when the split records hold `SQL` or --db is BIRD's `*_databases`."""
    if args.style:
        return args.style, "--style"
    if records and "SQL" in records[0]:
        return "bird", "the split JSON holds BIRD's SQL key"
    if db_dir.name.endswith("_databases"):
        return "bird", f"--db {db_dir.name} is BIRD's database folder"
    return "spider", "the default"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _check_inputs(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[str], Path, list[int] | None]:
    """Gold (sql, db_id) pairs, aligned predictions, the database dir and (multi-turn gold files: blank lines
    separate interactions in both files) each line's interaction, or one error line."""
    from text2sql.eval.interaction import align_sessions, is_multi_turn

    gold = read_gold(args.gold)
    if not gold:
        raise UserError(f"gold file is empty: {args.gold}")
    interactions = None
    if is_multi_turn(args.gold):
        pred, interactions = align_sessions(args.gold, args.pred)
    else:
        pred = read_pred(args.pred)
    while len(pred) > len(gold) and pred[-1] == "":  # tolerate only trailing empty lines in the prediction file
        pred.pop()
    if len(pred) != len(gold):
        raise UserError(f"line count mismatch: {args.gold} has {len(gold)} queries, {args.pred} has {len(pred)} lines")
    db_dir = Path(args.db)
    if not db_dir.is_dir():
        raise UserError(f"database directory not found: {db_dir}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")
    if args.out:
        check_writable(Path(args.out))  # before scoring
    return gold, pred, db_dir, interactions


def _check_style(args: argparse.Namespace, style: str) -> None:
    if style == "bird" and args.etype != "exec":
        raise UserError(f"--etype {args.etype}: exact set match is Spider's metric; BIRD is scored by execution "
                       "(--etype exec)")
    if style == "bird" and (args.plug_value or args.keep_distinct):  # --test-suite: every file by BIRD's rule
        raise UserError("--plug-value / --keep-distinct are Spider's rules; BIRD's runs both queries as written "
                       "(pass --style spider to use them)")


def _write_out(path: str, items, questions, levels, verdicts, matches, interactions=None) -> None:
    from text2sql.eval.interaction import turn_positions

    positions = turn_positions(interactions) if interactions is not None else None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for i, (db_id, g, p) in enumerate(items):
            row = {"index": i, "db_id": db_id}
            if questions is not None:
                row["question"] = questions[i]
            row.update(gold=g, prediction=p, hardness=levels[i])
            if interactions is not None:
                row.update(interaction=interactions[i], turn=positions[i])
            if verdicts is not None:
                row.update({k: v for k, v in verdicts[i].to_dict().items() if k not in row})
            if matches is not None:
                m = matches[i]
                row["exact_match"] = m.exact
                row["match_differs"] = m.differing()
                if m.error or m.gold_error:
                    row["match_error"] = m.gold_error and f"gold: {m.gold_error}" or m.error
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _print_tables(console, args, style, levels, verdicts, matches, match_summary) -> None:
    from rich.table import Table

    from text2sql.eval.execute import STATUSES
    from text2sql.eval.metrics import table_rows
    from text2sql.eval.style import get_style

    title = {"exec": "EXECUTION ACCURACY", "match": "EXACT SET MATCH", "all": "EXECUTION ACCURACY AND EXACT SET MATCH"}
    suffix = " (test suite)" if args.test_suite and verdicts is not None else ""
    table = Table(title=title[args.etype] + suffix + (" (BIRD's rule)" if style == "bird" else ""))
    table.add_column("")
    level_names = [level for level, _, _ in table_rows([], get_style(style).levels)]
    for level in level_names:
        table.add_column(level, justify="right")
    counts = Counter(levels)
    table.add_row("count", *[str(len(levels) if lv == "all" else counts.get(lv, 0)) for lv in level_names])
    if verdicts is not None:
        table.add_row("execution", *[_fmt(ex) for _, _, ex in table_rows(verdicts, get_style(style).levels)])
    if matches is not None:
        table.add_row("exact match", *[_fmt(match_summary[lv]["exact"]) for lv in level_names])
    console.print(table)
    if matches is not None:
        _print_partial(console, matches, match_summary, level_names, levels)
    if verdicts is not None:
        vc = Counter(v.status for v in verdicts)
        st = Table(title="status")
        st.add_column("status")
        st.add_column("count", justify="right")
        for s in STATUSES:
            st.add_row(s, str(vc.get(s, 0)))
        console.print(st)


def _print_partial(console, matches, match_summary, level_names, levels) -> None:
    """The official component F1s; "n/a" where no prediction of the level parses (the official rule, F1 = 1
    when nothing was predicted and nothing recalled, would print 1.000 there)."""
    from rich.table import Table

    from text2sql.eval.match import PARTIAL_TYPES

    parsed = Counter()
    for m, level in zip(matches, levels):
        parsed[level] += int(bool(m.parsed))
        parsed["all"] += int(bool(m.parsed))
    pt = Table(title="partial matching F1 (official components)")
    pt.add_column("")
    for level in level_names:
        pt.add_column(level, justify="right")
    for t in PARTIAL_TYPES:
        pt.add_row(t, *["n/a" if match_summary[lv]["count"] and not parsed[lv] else
                        _fmt(match_summary[lv]["partial"][t] and match_summary[lv]["partial"][t]["f1"])
                        for lv in level_names])
    console.print(pt)
    if any(match_summary[lv]["count"] and not parsed[lv] for lv in level_names):
        console.print("n/a: no parsable prediction at that level (the official tool prints 1.000 there)")
    unparsed = sum(not m.parsed and not m.gold_error for m in matches)
    gold_bad = sum(bool(m.gold_error) for m in matches)
    console.print(f"predictions the official parser rejects (scored as the empty query): {unparsed}"
                  + (f"; gold queries it rejects (not exact): {gold_bad}" if gold_bad else ""))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.eval.score import Example, score

    gold, pred, db_dir, interactions = _check_inputs(args)
    do_exec, do_match = args.etype in ("exec", "all"), args.etype in ("match", "all")
    records = _split_records(args, len(gold))
    style, why = _infer_style(args, records, db_dir)
    _check_style(args, style)
    questions = [str(r["question"]) for r in records] if records is not None and args.questions else None
    stated = [r.get("difficulty") for r in records] if style == "bird" and records else None
    tables = _tables_path(args, db_dir) if do_match else None
    if do_exec:
        _check_db_dir(db_dir, [db_id for _, db_id in gold], args.test_suite)

    items = [(db_id, g, p) for (g, db_id), p in zip(gold, pred)]
    examples = [Example(db_id, g, level=stated[i] if stated else None,
                        interaction=interactions[i] if interactions is not None else None)
                for i, (g, db_id) in enumerate(gold)]
    matcher = None
    if do_match:
        from text2sql.eval.match import ExactMatcher

        matcher = ExactMatcher(tables, db_dir)
    evaluator = ExecutionEvaluator(db_dir, timeout=args.timeout, workers=args.workers, plug_value=args.plug_value,
                                   keep_distinct=args.keep_distinct, test_suite=args.test_suite,
                                   style=style) if do_exec else contextlib.nullcontext()
    with evaluator as ev:  # the scoring the EX callback does each epoch (text2sql.eval.score)
        scored = score(examples, pred, ev, matcher, progress=not args.no_progress)
    verdicts, matches, levels = scored.verdicts, scored.matches, scored.levels
    match_summary = None
    if do_match:
        from text2sql.eval.match import summarize_match

        match_summary = summarize_match(matches, levels)
    if args.out:
        _write_out(args.out, items, questions, levels, verdicts, matches, interactions)
    console = Console()
    if style == "bird":
        console.print(f"BIRD's rule (set of rows) from {why}" + ("" if stated and any(stated) else
                      "; no difficulty known (pass --questions dev.json): per-level columns are empty"))
    _print_tables(console, args, style, levels, verdicts, matches, match_summary)
    if interactions is not None:
        from text2sql.eval.interaction import interaction_table

        console.print(interaction_table(interactions, verdicts and [v.correct for v in verdicts],
                                        matches and [m.exact for m in matches]))
    if args.out:
        console.print(f"verdicts written to {args.out}")
    return 0
