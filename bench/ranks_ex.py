"""EX of a several-rank run's last epoch vs the same weights on one rank.

The EX callback under N ranks shards the dev examples, generates them (in lock-step under ZeRO-3) and gathers
them in dev order; this regenerates the run's last-epoch examples in one process with the run's exported
adapter, scores them with the same evaluator and prints both EX side by side, with the number of predictions
that differ.

    python train.py hardware.devices=2 trainer.max_epochs=3 eval.limit=100 hydra.run.dir=RUN   # 2 ranks
    python bench/ranks_ex.py RUN
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished training run dir (adapter/, predictions/, .hydra/)")
    args = parser.parse_args()

    from hydra.utils import instantiate

    from text2sql.data.prompt import encode_source
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.eval.generate import generate_sql
    from text2sql.eval.metrics import summarize
    from text2sql.inference.predict import resolve_subtree, compose_config, load_for_inference

    epochs = sorted((args.run / "predictions").glob("epoch_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    if not epochs or not (args.run / "adapter").is_dir():
        print(f"error: {args.run} has no predictions/epoch_*.jsonl or adapter/", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in epochs[-1].read_text().splitlines()]
    cfg = compose_config([], args.run)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model, tokenizer, _ = load_for_inference(cfg, dataset, ("adapter", args.run / "adapter"))
    data, ev = resolve_subtree(cfg, "data"), resolve_subtree(cfg, "eval")
    records = dataset.records("dev")
    sources = [encode_source(records[r["index"]], tokenizer, data.template, data.max_source_length,
                             system_prompt=data.system_prompt)[0] for r in rows]
    preds = generate_sql(model, tokenizer, sources, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
    evaluator = ExecutionEvaluator(dataset.root / "database")
    try:
        verdicts = evaluator.evaluate([(r["db_id"], r["gold"], p) for r, p in zip(rows, preds)])
    finally:
        evaluator.close()
    one = summarize(verdicts)["execution_accuracy"]
    many = sum(r["correct"] for r in rows) / len(rows)
    differ = sum(r["prediction"] != p for r, p in zip(rows, preds))
    print(f"{epochs[-1].name}: {len(rows)} dev examples; EX under the run's ranks {many:.4f}, "
          f"same weights on 1 rank {one:.4f}; {differ} predictions differ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
