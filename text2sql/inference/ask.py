"""`text2sql ask --run RUN_DIR --db FILE.sqlite "question"`: a trained model answering on any SQLite database.

The schema text comes from the file itself (`data.sqlite_schema`, the code `prepare --from-sqlite` uses), the
prompt is the run's record, template and source budget (`prompt.make_record` / `encode_source`), the model is
loaded as `predict` loads it, and the SQL runs through the evaluator's guard: read-only, writes refused, a
deadline. Without a question, questions are read line by line until EOF. Model and adapter, generation and
execution times go to stderr; the answers (SQL and a table, or JSON lines with --json) to stdout.

A multi-turn run (SParC, CoSQL: `dataset.layout`) answers in a conversation, as it was trained: each question's
prompt carries the earlier questions and the SQL written for them as its history (`data.prompt.add_history`'s
"earlier" turns, with the model's SQL where training had the gold); a blank line starts a new conversation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from text2sql.errors import UserError
from text2sql.config.decoding import STRATEGIES
from text2sql.inference.predict import DEVICES, add_weight_choice, weights_line

ROW_CAP = 100_000  # rows fetched at most; the table shows --rows of them


@dataclass
class Answer:
    question: str
    sql: str
    status: str  # "ok", or the guard's status: syntax_error, exec_error, write_refused, timeout, too_many_rows, ...
    error: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    row_count: int = 0
    generation_s: float = 0.0
    execution_s: float = 0.0
    decoding: str = "greedy"
    candidates: int = 1  # distinct candidates weighed (execution_guided / self_consistency)
    turn: int = 1  # the question's turn in its conversation (multi-turn runs; 1 otherwise)

EXIT_RULE = ("exit status: 0 when the SQL of every question ran, 1 when the SQL of any question did not (a syntax "
             "error, a refused write, a timeout, ...: each answer says why), 2 for bad input before any question; "
             "the same for one question and for questions read from stdin")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path,
                     help="a training run dir: its config, and its adapter/model or last checkpoint")
    src.add_argument("--adapter", type=Path, help="a PEFT adapter dir (its run's config is found when it sits in one)")
    src.add_argument("--checkpoint", type=Path, help="a Lightning .ckpt written by train.py")
    add_weight_choice(parser)
    parser.add_argument("--model", metavar="ID_OR_DIR", default=None,
                        help="base model: a Hugging Face hub id or a local model dir (sets model.path); alone, the "
                        "base model answers untrained")
    parser.add_argument("--db", type=Path, required=True, help="the SQLite file to ask about (opened read-only)")
    parser.add_argument("question", nargs="?", default=None,
                        help="the question; without one, questions are read from stdin line by line until EOF (a "
                        "blank line starts a new conversation for a multi-turn run)")
    parser.add_argument("--interactive", action="store_true",
                        help="ask at a question> prompt, one question after another; a multi-turn run (SParC, "
                        "CoSQL) keeps the earlier questions and their SQL as history, as in training; a blank line "
                        "starts a new conversation, EOF (Ctrl-D) ends")
    parser.add_argument("--decoding", choices=STRATEGIES, default=None,
                        help="decoding strategy (default: the run's eval.decoding, greedy unless set); "
                        "execution_guided and self_consistency run their candidates on --db")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where generation runs (default auto: this process's GPU if torch sees one, else the CPU)")
    parser.add_argument("--json", action="store_true", help="one JSON object per question on stdout, for scripts")
    parser.add_argument("--rows", type=int, default=20, help="rows shown (default 20)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds the SQL may run, > 0 (default eval.timeout)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default eval.max_new_tokens")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override of the run's (or the default) config, e.g. -o model=codellama7b")
    parser.epilog = EXIT_RULE


class DatasetOnDemand:
    """The run's dataset, instantiated only if the tiny model must be rebuilt (its tokenizer needs the text)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def records(self, split: str) -> list[dict]:
        from hydra.utils import instantiate

        from text2sql.inference.predict import resolve_subtree

        return instantiate(resolve_subtree(self.cfg, "dataset")).records(split)


class Asker:
    """A loaded model and an opened database: `answer(question)` generates, runs and times one question."""

    def __init__(self, args: argparse.Namespace, schema) -> None:
        from text2sql.inference.predict import resolve_subtree, load_for_inference, resolve_source

        if args.run is None and args.adapter is None and args.checkpoint is None and args.model is None:
            raise UserError("say which model answers: --run RUN_DIR, --adapter DIR, --checkpoint FILE or "
                            "--model ID_OR_DIR")
        overrides = list(args.override) + ([f"model.path={args.model}"] if args.model else [])
        cfg, weights, _, which = resolve_source(args, overrides, verb="ask")
        self.schema, self.db = schema, args.db
        self.data_cfg, eval_cfg = resolve_subtree(cfg, "data"), resolve_subtree(cfg, "eval")
        self.prompt_form = str(cfg.dataset.get("prompt", "zero_shot"))  # the run's prompt form (data/forms.py)
        self.multi_turn = bool(cfg.dataset.get("layout"))  # SParC / CoSQL: trained with earlier turns as history
        self.history: list[list[str]] = []  # this conversation's [input, SQL] pairs, oldest first
        self.timeout = args.timeout if args.timeout is not None else float(eval_cfg.timeout)
        from text2sql.config.decoding import Decoding

        self.decoding = Decoding.from_config(eval_cfg.get("decoding"))  # the run's eval.decoding
        self._evaluator = None  # runs candidates on --db, made when a strategy first executes
        self.max_new_tokens = args.max_new_tokens or int(eval_cfg.max_new_tokens)
        start = time.perf_counter()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the answer is the output; a weights bar per start is noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model, self.tokenizer, self.device = load_for_inference(cfg, DatasetOnDemand(cfg), weights,
                                                                         args.device)
        self.load_s = time.perf_counter() - start
        self.base = str(getattr(self.model.config, "_name_or_path", "") or cfg.model.get("path") or cfg.model.name)
        self.weights = weights_line(weights, which)
        from text2sql.sql.sqlite_guard import open_readonly

        self.conn, self.guard = open_readonly(args.db, heap_limit=None)

    def close(self) -> None:
        self.conn.close()
        if self._evaluator is not None:
            self._evaluator.close()

    def describe(self) -> str:
        turns = ("; a multi-turn run: earlier questions and their SQL are the history, a blank line starts a new "
                 "conversation" if self.multi_turn else "")
        return (f"model: {self.base}; weights: {self.weights}; template: {self.data_cfg.template}; "
                f"on {self.device}; loaded in {self.load_s:.1f} s{turns}")

    def new_conversation(self) -> None:
        self.history = []

    def _decode(self, ids: list[int], strategy: str | None):
        """The SQL for one prompt by the chosen strategy (the run's when None), as the EX callback decodes."""
        import dataclasses

        from text2sql.eval.candidates import decode_local

        decoding = self.decoding if strategy is None else dataclasses.replace(self.decoding, strategy=strategy)
        if decoding.executes and self._evaluator is None:
            from text2sql.eval.execute import ExecutionEvaluator

            self._evaluator = ExecutionEvaluator(Path(self.db).resolve().parent, timeout=self.timeout, workers=0)
        return decode_local(self.model, self.tokenizer, [ids], [str(Path(self.db).resolve())], decoding,
                            evaluator=self._evaluator if decoding.executes else None, batch_size=1,
                            max_new_tokens=self.max_new_tokens)[0]

    def answer(self, question: str, decoding: str | None = None) -> Answer:
        from text2sql.data.forms import sqlite_create_statements
        from text2sql.data.prompt import encode_source, make_record
        from text2sql.data.spider import SpiderExample
        from text2sql.eval.query import execute_query

        form = self.prompt_form
        code = sqlite_create_statements(Path(self.db)) if form == "code" else None
        record = make_record(SpiderExample(self.schema.db_id, question, ""), self.schema, form, code)
        turn = len(self.history) + 1
        if self.multi_turn:  # as add_history("earlier") built training's prompts; the oldest turns cut first
            record["history"] = [list(pair) for pair in self.history]
        ids, _ = encode_source(record, self.tokenizer, self.data_cfg.template, self.data_cfg.max_source_length,
                               system_prompt=self.data_cfg.system_prompt)
        start = time.perf_counter()
        pred = self._decode(ids, decoding)
        sql, gen_s = pred.sql, time.perf_counter() - start
        if self.multi_turn:
            self.history.append([record["input"], sql])
        if not sql:
            return Answer(question, sql, "empty_prediction", "the model wrote no SQL", generation_s=gen_s,
                          decoding=pred.strategy, candidates=pred.candidates, turn=turn)
        start = time.perf_counter()
        result = execute_query(self.conn, self.guard, sql, self.timeout, max_rows=ROW_CAP)
        exec_s = time.perf_counter() - start
        rows = [list(r) for r in result.rows or []]
        error = result.error
        if result.status == "write_refused":
            error = f"the SQL writes to the database: refused, nothing was changed ({error})" if error else \
                "the SQL writes to the database: refused, nothing was changed"
        return Answer(question, sql, result.status, error, list(result.columns or []), rows, len(rows),
                      gen_s, exec_s, pred.strategy, pred.candidates, turn)


def _cell(value) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return "NULL" if value is None else str(value)


def show(answer: Answer, limit: int, as_json: bool) -> None:
    """The SQL and the first rows (a rich table), or one JSON line; timings on stderr."""
    if as_json:
        out = asdict(answer)
        out["rows"] = out["rows"][:limit]
        print(json.dumps(out, ensure_ascii=False, default=_cell), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    console.print(answer.sql or "(no SQL)", markup=False, highlight=False)
    if answer.status == "ok":
        table = Table(*answer.columns, show_lines=False)
        for row in answer.rows[:limit]:
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
        shown = f", first {limit} shown" if answer.row_count > limit else ""
        print(f"{answer.row_count} row{'s' if answer.row_count != 1 else ''}{shown}", flush=True)
    else:
        print(f"error: {answer.status}: {answer.error}", flush=True)
    tried = f" ({answer.candidates} candidates)" if answer.candidates > 1 else ""
    print(f"{answer.decoding}{tried}: generated in {answer.generation_s:.2f} s, executed in {answer.execution_s:.3f} s",
          file=sys.stderr, flush=True)


def _questions(question: str | None, interactive: bool = False):
    """The question given, else stdin's lines; None for a blank line (a new conversation)."""
    if question is not None:
        yield question
        return
    prompt = interactive or sys.stdin.isatty()
    while True:
        if prompt:
            print("question> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line.strip() or None


def check_args(args: argparse.Namespace) -> None:
    """Bad input, one line each, before any model loads."""
    if args.db.is_dir():
        inside = next(iter(sorted(args.db.rglob("*.sqlite"))), None)
        hint = f", e.g. --db {inside}" if inside else ""
        raise UserError(f"--db {args.db} is a directory: give one SQLite database file{hint}")
    if args.question is not None and not args.question.strip():
        raise UserError('empty question: ask something, e.g. text2sql ask --run RUN --db FILE "How many rows?"')
    if args.question is not None and args.interactive:
        raise UserError("--interactive reads questions at a prompt: drop the question argument, or --interactive")
    if args.rows < 0:
        raise UserError(f"--rows must be >= 0, got {args.rows}")
    if args.timeout is not None and not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout:g}")


def run(args: argparse.Namespace) -> int:
    """Answer every question; the exit status follows EXIT_RULE."""
    from text2sql.data.sqlite_schema import read_schema

    check_args(args)
    schema = read_schema(args.db)  # a missing file, not SQLite, no tables: one line before any model loads
    asker = Asker(args, schema)
    print(asker.describe(), file=sys.stderr)
    print(f"database: {args.db} ({len(schema.table_names)} tables); decoding: "
          f"{args.decoding or asker.decoding.strategy}", file=sys.stderr)
    failed = 0
    try:
        for question in _questions(args.question, args.interactive):
            if question is None:
                if asker.history and (args.interactive or sys.stdin.isatty()):
                    print("(a new conversation)", file=sys.stderr, flush=True)
                asker.new_conversation()
                continue
            answer = asker.answer(question, args.decoding)
            show(answer, args.rows, args.json)
            failed += answer.status != "ok"
    finally:
        asker.close()
    return 1 if failed else 0
