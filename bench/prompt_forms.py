"""What each prompt form (`dataset.prompt`) costs in source tokens on real Spider dev, side by side.

For zero_shot, one_shot and code, every dev record is rendered with the `llama2` template (CodeLlama's, system
prompt included) and tokenised with the CodeLlama-style stand-in tokenizer (`model=tiny_codellama`'s:
SentencePiece-style pieces, byte fallback, single digits), learned once from the text of all three forms so
no form pays for words the others taught it. Reports source p50 / p95 / max before any cut and how many
examples the 2048-token budget cuts (and how). The code form needs each database file: examples without one
are left out of that form only (its count says how many it measured). CodeLlama's own vocabulary is general, so its counts differ; the ratios between
forms are what this measures.

    python bench/prompt_forms.py [--spider DIR] [--limit N] [--max-source-length 2048] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchjson import RESULTS, write_json  # noqa: E402

FORMS = ("zero_shot", "one_shot", "code")


def measure(spider: str | None, splits: list[str], limit: int | None, max_source: int, vocab: int) -> dict:
    from text2sql.data.datasets import InstructionDataset
    from text2sql.data.forms import create_statements
    from text2sql.data.prompt import encode_record, length_stats, make_record, truncation_counts
    from text2sql.model.llama_tokenizer import train_llama_tokenizer

    base = InstructionDataset(spider)
    pairs = [pair for split in splits for pair in base.pairs(split)]
    pairs = pairs[:limit] if limit else pairs
    with_db = [(ex, schema) for ex, schema in pairs if base.db_path(ex.db_id).is_file()]
    code = {db: create_statements(base.root / "database", db) for db in {ex.db_id for ex, _ in with_db}}
    records = {form: [make_record(ex, schema, form, code[ex.db_id] if form == "code" else None)
                      for ex, schema in (with_db if form == "code" else pairs)] for form in FORMS}
    texts = list(dict.fromkeys(t for recs in records.values() for r in recs for t in (r["instruction"], r["input"],
                                                                                         r["output"])))
    tokenizer = train_llama_tokenizer(texts, vocab)
    out = {}
    for form, recs in records.items():
        encoded = [encode_record(r, tokenizer, "llama2", max_source, 512) for r in recs]
        stats, cut = length_stats(encoded), truncation_counts(encoded)
        out[form] = {**{k: stats[k] for k in ("count", "source_p50", "source_p95", "source_max")},
                     "cut": cut["truncated"], "cuts": {k: v for k, v in cut.items()
                                                       if k not in ("examples", "truncated") and v}}
    return {"splits": list(splits), "examples": len(pairs), "with_database": len(with_db), "vocab": len(tokenizer), "forms": out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spider", default=None, help="Spider dir (default $SPIDER_DIR, else data/spider)")
    parser.add_argument("--splits", default="dev,train", help="Spider splits to measure (default dev,train)")
    parser.add_argument("--limit", type=int, default=None, help="first N examples only (a smoke run)")
    parser.add_argument("--max-source-length", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=4096, help="stand-in vocab bound (model=tiny_codellama's)")
    parser.add_argument("--json", default=str(RESULTS / "prompt_forms.json"), help="'' to write none")
    args = parser.parse_args(argv)
    got = measure(args.spider, args.splits.split(","), args.limit, args.max_source_length, args.vocab)
    forms = got["forms"]
    print(f"Spider {args.splits}: {got['examples']} examples, {got['with_database']} with their database (the code "
          f"form's); stand-in vocab {got['vocab']}; llama2 template; budget {args.max_source_length}")
    print("| form | source p50 | p95 | max | cut by the budget | cuts |\n|---|---|---|---|---|---|")
    for form, f in forms.items():
        print(f"| {form} | {f['source_p50']} | {f['source_p95']} | {f['source_max']} | {f['cut']} of {f['count']} | "
              f"{f['cuts'] or '—'} |")
    z = forms["zero_shot"]["source_p50"]
    ours = "; ".join(f"{k} p50 {v['source_p50']} / p95 {v['source_p95']}, {v['cut']} cut" for k, v in forms.items())
    summary = {"compares": f"source tokens per prompt form, Spider {args.splits} ({got['examples']} examples; code: "
                           f"{got['with_database']} with a database), llama2 template, "
                           f"CodeLlama-style stand-in tokenizer, {args.max_source_length}-token budget",
               "ours": ours, "baseline": f"zero_shot p50 {z}",
               "ratio": forms["one_shot"]["source_p50"] / z, "ratio_label": "one_shot / zero_shot p50"}
    if args.json:
        write_json(args.json, {**got, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
