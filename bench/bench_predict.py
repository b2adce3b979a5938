"""Batched greedy generation (what `predict` and the callback do) vs one example at a time.

Same model (the default tiny Llama as built under TEXT2SQL_CACHE: random init, so it rarely stops early),
same dev prompts, same max_new_tokens; asserts identical SQL on both sides and prints the speed ratio.

    python bench/bench_predict.py [--n 64] [--batch-size 32] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from text2sql.data.datasets import corpus
from text2sql.data.prompt import encode_source
from text2sql.eval.generate import generate_sql
from text2sql.config.paths import conf_dir
from text2sql.inference.predict import resolve_subtree
from text2sql.model.load import load_model, load_tokenizer, resolve_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchjson import RESULTS, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", default=str(RESULTS / "bench_predict.json"), help="write the figures here ('' for none)")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train")
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model_cfg = resolve_subtree(cfg, "model")
    path = resolve_model_path(model_cfg, corpus=lambda: corpus(dataset))
    tokenizer = load_tokenizer(model_cfg, path)
    model = load_model(model_cfg, path, tokenizer)
    data_cfg = resolve_subtree(cfg, "data")
    sources = [encode_source(r, tokenizer, data_cfg.template, data_cfg.max_source_length)[0]
               for r in dataset.records("dev")[: args.n]]

    def timed(batch_size):
        start = time.perf_counter()
        out = generate_sql(model, tokenizer, sources, batch_size=batch_size, max_new_tokens=args.max_new_tokens)
        return time.perf_counter() - start, out

    timed(args.batch_size)  # warm-up
    t_single, single = timed(1)
    t_batched, batched = timed(args.batch_size)
    same = sum(a == b for a, b in zip(single, batched))
    print(f"threads={torch.get_num_threads()} examples={len(sources)} max_new_tokens={args.max_new_tokens}")
    print(f"one at a time : {t_single:7.2f} s")
    print(f"batched ({args.batch_size:>3}) : {t_batched:7.2f} s")
    print(f"speed-up      : {t_single / t_batched:7.2f}x   identical outputs: {same}/{len(sources)}")
    if args.json:
        write_json(args.json, {
            "benchmark": "bench_predict", "threads": torch.get_num_threads(), "examples": len(sources),
            "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "single_s": t_single,
            "batched_s": t_batched, "identical": same,
            "summary": {"compares": "batched greedy generation (left padding, KV cache; what predict and the callback "
                                    f"use) vs one example at a time, tiny model, {len(sources)} dev prompts, "
                                    f"identical outputs: {same}/{len(sources)}",
                        "ours": f"{t_batched:.2f} s", "baseline": f"{t_single:.2f} s",
                        "ratio": round(t_single / t_batched, 2)}})


if __name__ == "__main__":
    main()
