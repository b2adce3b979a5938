"""Per-epoch cost of the execution-accuracy callback against the training time of one epoch.

For each workload (the default sample: its whole dev split; real Spider: a fixed-seed dev subset) the tiny
model is trained for `--train-steps` steps with our loop (which also measures s/step, so one epoch's training
time is s/step x steps per epoch), then the callback's per-epoch work is timed on that model exactly as the
callback does it: batched greedy generation (`eval.batch_size`, `eval.max_new_tokens`), then execution of every
prediction beside its gold query (first call: gold executed and cached, hardness parsed; later epochs: cached).
Reports generated tokens/s and the EX share of an epoch; a Spider subset is also scaled to the full dev split.
Training and generation are timed on the process's CPU clock (one torch thread: the work done, steady on a shared
machine; wall times are in the JSON too); execution runs in worker processes and is timed on the wall clock.

    python bench/eval_cost.py [--workloads sample,spider] [--spider-limit 64] [--train-steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchjson import write_json  # noqa: E402
from train_throughput import Meter, _setup, chosen_workloads, run_ours  # noqa: E402


def measure(workload: str, args) -> dict:
    import torch

    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.eval.generate import generate_sql

    limit = args.spider_limit if workload == "spider" else args.sample_limit
    extra = [f"eval.limit={limit}" if limit else "eval.limit=null", *args.override]
    cfg, dm, tokenizer, path = _setup(workload, args.spider, args.batch_size, None, None, extra)
    meter = Meter(tokenizer.pad_token_id)
    model = run_ours(cfg, dm, tokenizer, path, args.warmup + args.train_steps, meter)
    train = meter.summary(args.warmup)
    steps_per_epoch = math.ceil(len(dm.train_items) / dm.batch_size)
    s_per_step = train["cpu_s_per_step"]
    epoch_train_s = s_per_step * steps_per_epoch

    items = dm.eval_items(cfg.eval.limit, cfg.eval.seed)
    generated = [0]
    original = model.generate

    def counting_generate(*a, **kw):  # count the new, non-pad tokens the callback's generation produces
        out = original(*a, **kw)
        width = kw["input_ids"].shape[1]
        generated[0] += int((out[:, width:] != tokenizer.pad_token_id).sum())
        return out

    model.generate = counting_generate
    t0, w0 = time.process_time(), time.perf_counter()
    preds = generate_sql(model, tokenizer, [it.source_ids for it in items], batch_size=cfg.eval.batch_size,
                         max_new_tokens=cfg.eval.max_new_tokens)
    gen_s, gen_wall_s = time.process_time() - t0, time.perf_counter() - w0
    evaluator = ExecutionEvaluator(dm.dataset.root / "database", timeout=cfg.eval.timeout, workers=cfg.eval.workers)
    triples = [(it.db_id, it.gold, p) for it, p in zip(items, preds)]
    try:
        t0 = time.perf_counter()
        verdicts = evaluator.evaluate(triples)
        exec_first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluator.evaluate(triples)
        exec_later_s = time.perf_counter() - t0
    finally:
        evaluator.close()
    n_dev = len(dm.dev_records)
    scale = n_dev / len(items)
    callback_s = gen_s + exec_later_s  # an epoch after the first (gold results cached)
    return {
        "workload": workload, "threads": torch.get_num_threads(), "train_records": len(dm.train_items),
        "batch_size": dm.batch_size, "train_steps": train["steps"], "s_per_step": s_per_step,
        "wall_s_per_step": train["wall_s_per_step"], "generate_wall_s": gen_wall_s,
        "steps_per_epoch": steps_per_epoch, "epoch_train_s": epoch_train_s, "loss_last": train["loss_last"],
        "eval_examples": len(items), "dev_examples": n_dev, "eval_batch_size": cfg.eval.batch_size,
        "max_new_tokens": cfg.eval.max_new_tokens, "generated_tokens": generated[0],
        "generated_tokens_per_example": generated[0] / len(items), "generate_s": gen_s,
        "generated_tokens_per_s": generated[0] / gen_s, "execute_first_s": exec_first_s,
        "execute_later_s": exec_later_s, "callback_epoch_s": callback_s,
        "callback_full_dev_s": callback_s * scale, "ex": sum(v.correct for v in verdicts) / len(verdicts),
        "callback_share_of_epoch": callback_s / (callback_s + epoch_train_s),
        "callback_full_dev_share_of_epoch": callback_s * scale / (callback_s * scale + epoch_train_s),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="sample,spider")
    ap.add_argument("--sample-limit", type=int, default=None, help="dev examples for the sample (default: all)")
    ap.add_argument("--spider-limit", type=int, default=64, help="fixed-seed Spider dev subset")
    ap.add_argument("--train-steps", type=int, default=30, help="timed training steps before evaluating")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spider", default=None, help="real Spider dir (default: SPIDER_DIR or ../shared/spider)")
    ap.add_argument("--override", action="append", default=[], help="a Hydra override (repeatable)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "eval_cost.json"))
    args = ap.parse_args(argv)

    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    workloads = chosen_workloads(args)
    if not workloads or any(w not in ("sample", "spider") for w in workloads):
        raise SystemExit(f"error: workloads must be sample and/or spider, got {args.workloads!r}")
    rows = {w: measure(w, args) for w in workloads}
    print(f"{'workload':<9}{'dev ex':>8}{'train/epoch':>12}{'EX cb/epoch':>12}{'share':>7}{'gen tok/s':>10}"
          f"{'tok/ex':>7}{'exec 1st/later':>16}  full dev (est.)")
    for w, r in rows.items():
        full = "" if r["eval_examples"] == r["dev_examples"] else \
            f"{r['callback_full_dev_s']:.1f} s ({r['callback_full_dev_share_of_epoch']:.0%}) for {r['dev_examples']}"
        print(f"{w:<9}{r['eval_examples']:>8}{r['epoch_train_s']:>11.1f}s{r['callback_epoch_s']:>11.1f}s"
              f"{r['callback_share_of_epoch']:>7.0%}{r['generated_tokens_per_s']:>10.0f}"
              f"{r['generated_tokens_per_example']:>7.1f}{r['execute_first_s']:>8.2f}/{r['execute_later_s']:.2f}s  {full}")
    first = rows[workloads[0]]
    summary = {
        "compares": "per-epoch EX callback time (generation + execution) vs training time per epoch, our loop",
        "ours": "; ".join(f"{w}: EX {r['callback_epoch_s']:.1f} s for {r['eval_examples']} dev examples "
                          f"({r['generated_tokens_per_s']:.0f} generated tok/s)" for w, r in rows.items()),
        "baseline": "; ".join(f"{w}: training {r['epoch_train_s']:.0f} s/epoch" for w, r in rows.items()),
        "ratio": round(first["callback_share_of_epoch"], 2), "ratio_label": f"EX share of an epoch ({workloads[0]})",
    }
    if args.json:
        write_json(args.json, {"benchmark": "eval_cost", "threads": args.threads, "workloads": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
