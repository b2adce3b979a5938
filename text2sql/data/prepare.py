"""`text2sql prepare --spider DIR --out OUT`: Spider as DB-GPT-Hub's instruction files, written atomically;
`text2sql prepare --from-sqlite DBDIR --pairs FILE --out OUT`: Spider's layout from your own SQLite files.

Writes ``example_text2sql_train.json`` (train_spider then train_others), ``example_text2sql_dev.json`` and
``dataset_info.json`` in the layout DB-GPT-Hub's ``gen_train_eval_data.sh`` produces, so its training scripts
(and ours) read them unchanged. Everything is built in memory first and then moved into OUT, so an error
leaves OUT as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from text2sql.data.datasets import InstructionDataset
from text2sql.data.from_sqlite import SPLIT_BY, find_databases, gold_checker, prepare_from_sqlite
from text2sql.data.prompt import TEMPLATES, encode_record, length_stats, record_lengths, truncation_counts
from text2sql.data.spider import ENV_VAR
from text2sql.errors import UserError

FILES = {"train": "example_text2sql_train.json", "dev": "example_text2sql_dev.json"}
LAYOUT_FILES = ("tables.json", "train_spider.json", "dev.json", "train_gold.sql", "dev_gold.sql", "database")
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history"}


def dataset_info() -> dict:
    """DB-GPT-Hub's dataset_info.json entries naming the two files."""
    return {f"example_text2sql_{split}": {"file_name": name, "columns": dict(COLUMNS)} for split, name in FILES.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--spider", metavar="DIR", default=None,
        help=f"directory in Spider's layout (tables.json, train_spider.json, dev.json); default ${ENV_VAR}, "
        "else data/spider",
    )
    source.add_argument(
        "--from-sqlite", metavar="DBDIR", type=Path, default=None,
        help="build Spider's layout (tables.json, train/dev JSON, gold files, database/) in OUT from the SQLite "
        "files in DBDIR (<db_id>.sqlite, flat or <db_id>/<db_id>.sqlite) and --pairs; then train with "
        "`python train.py dataset=spider dataset.root=OUT`",
    )
    parser.add_argument("--out", metavar="OUT", required=True, help="output directory (created if missing)")
    mine = parser.add_argument_group("with --from-sqlite")
    mine.add_argument("--pairs", metavar="FILE", type=Path, default=None,
                      help="JSONL or .csv with db_id, question, query (each gold query is run read-only first)")
    mine.add_argument("--dev-fraction", type=float, default=0.2, help="share of pairs for dev (default 0.2)")
    mine.add_argument("--split-by", choices=SPLIT_BY, default="random",
                      help="random: pairs at random (default); database: whole databases, as Spider splits")
    mine.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    mine.add_argument("--drop-invalid", action="store_true",
                      help="leave out pairs whose gold query does not run (listed) instead of stopping")
    mine.add_argument("--timeout", type=float, default=30.0, help="seconds per gold query (default 30)")
    mine.add_argument("--overwrite", action="store_true",
                      help="write into an existing, non-empty OUT (refused without it): replaces the files this "
                      "command writes and the databases of the same name under OUT/database; deletes nothing else")
    parser.add_argument(
        "--tokenizer", metavar="PATH", default=None,
        help="local Hugging Face tokenizer directory (never downloaded) for token-length statistics and "
        "truncation counts; without it the statistics are in characters",
    )
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="llama2",
                        help="chat template for token statistics (default: llama2)")
    parser.add_argument("--max-source-length", type=int, default=2048, help="source budget in tokens (default 2048)")
    parser.add_argument("--max-target-length", type=int, default=512, help="target budget in tokens (default 512)")


def load_tokenizer(path: str) -> Any:
    """A local tokenizer only: prepare must never reach a hub."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many kinds; one line is what the user needs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load a tokenizer from {path}: {first}") from None


def write_atomically(out: Path, files: dict[str, Any]) -> None:
    """Write JSON files into a temp dir beside OUT, then move them in; on error OUT is untouched."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; OUT should look like any mkdir'd dir
    try:
        for name, data in files.items():
            with (tmp / name).open("w", encoding="utf-8") as f:
                json.dump(data, f, indent=4 if isinstance(data, list) else 2, ensure_ascii=False)
        if not out.exists():
            os.replace(tmp, out)
            return
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _format(stats: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in stats.items())


def run_from_sqlite(args: argparse.Namespace) -> int:
    if args.pairs is None:
        raise UserError("--from-sqlite needs --pairs FILE (JSONL or .csv with db_id, question, query)")
    train, dev, dropped = prepare_from_sqlite(
        args.from_sqlite, args.pairs, Path(args.out), gold_checker(args.timeout), dev_fraction=args.dev_fraction,
        split_by=args.split_by, seed=args.seed, drop_invalid=args.drop_invalid,
        report=lambda line: print(line, file=sys.stderr), overwrite=args.overwrite)
    if dropped:
        print(f"dropped {len(dropped)} pairs whose gold query does not run (listed above)")
    ours = find_databases(args.from_sqlite)
    print(f"wrote {args.out}: tables.json, train_spider.json ({len(train)}), dev.json ({len(dev)}), "
          f"train_gold.sql, dev_gold.sql, database/ ({len(ours)} databases)")
    out = Path(args.out)
    kept = [p.name for p in out.iterdir() if p.name not in LAYOUT_FILES] + [
        f"database/{p.name}" for p in (out / "database").iterdir() if p.name not in ours]
    if kept:  # --overwrite into a folder that held more: say what was left as it was
        print(f"kept in {args.out} (not written by this command): {', '.join(sorted(kept))}")
    print(f"train on it: python train.py dataset=spider dataset.root={args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.from_sqlite is not None:
        return run_from_sqlite(args)
    dataset = InstructionDataset(args.spider)
    records = {split: dataset.records(split) for split in FILES}  # validates everything before writing
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    write_atomically(Path(args.out), {**{FILES[s]: r for s, r in records.items()}, "dataset_info.json": dataset_info()})

    print(f"spider: {dataset.root}")
    for split, recs in records.items():
        print(f"{split}: {len(recs)} records -> {Path(args.out) / FILES[split]}")
        if tokenizer is None:
            print(f"  length (characters, no --tokenizer): {_format(record_lengths(recs))}")
            continue
        encoded = [
            encode_record(r, tokenizer, args.template, args.max_source_length, args.max_target_length) for r in recs
        ]
        print(f"  tokens ({args.template}, before truncation): {_format(length_stats(encoded))}")
        print(f"  truncated (source<={args.max_source_length}, target<={args.max_target_length}): "
              f"{_format(truncation_counts(encoded))}")
    print(f"dataset_info: {Path(args.out) / 'dataset_info.json'}")
    return 0
