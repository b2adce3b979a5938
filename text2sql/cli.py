"""`text2sql VERB ...`: one console script whose verbs complete the pipeline around `train.py`.

Each verb lives in the module that owns its concern and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so that
`text2sql evaluate` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from text2sql.errors import UserError

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "prepare": ("text2sql.data.prepare", "write Spider as DB-GPT-Hub instruction records (example_text2sql_*.json)"),
    "sample": ("text2sql.data.sample_layouts", "write the generated sample in BIRD's, SParC's, CoSQL's or Chase's layout"),
    "predict": ("text2sql.inference.predict", "generate SQL for the dev split with a trained model -> pred.sql"),
    "ask": ("text2sql.inference.ask", "answer a question on any SQLite database with a trained model: SQL and result rows"),
    "evaluate": ("text2sql.eval.evaluate", "execution accuracy and exact set match of pred.sql against gold, official semantics, safe"),
    "testsuite": ("text2sql.testsuite.cli", "build a distilled test suite (neighbour databases) for a dataset's databases"),
    "merge": ("text2sql.inference.merge", "merge a LoRA adapter into its base model for serving"),
    "serve": ("text2sql.serve.cli", "serve a trained run over HTTP: OpenAI-compatible API, /v1/sql with rows, batched"),
    "report": ("text2sql.sweep.report", "rank the jobs of a multirun dir: summary.md / .csv / .png"),
    "dashboard": ("text2sql.tracking.dashboard", "create/update the W&B workspace for runs and sweeps (--print: JSON, offline)"),
    "sync": ("text2sql.tracking.offline", "upload every offline W&B run under a run or multirun dir (wandb sync)"),
}

MODEL_VERBS = ("predict", "ask", "merge", "serve")  # the verbs that run a model (torch's threads matter)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2sql",
        description="Text-to-SQL fine-tuning toolkit. Training is `python train.py [hydra overrides]`; "
        "these verbs prepare data, predict, evaluate, merge adapters and report sweeps.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:  # only the chosen verb's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and argv[0] in VERBS else None
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    if args.verb in MODEL_VERBS:  # before torch loads OpenMP, as train.py does (text2sql/machine/threads.py)
        from text2sql.machine.threads import preset_wait_policy, set_wait_policy

        set_wait_policy(preset_wait_policy())
    module = importlib.import_module(VERBS[args.verb][0])
    try:
        return int(module.run(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"text2sql {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output dir that is not writable, a full disk, ...: what and where, one line
        where = f": {err.filename}" if err.filename else ""
        print(f"text2sql {args.verb}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"text2sql {args.verb}: interrupted", file=sys.stderr)
        return 130
