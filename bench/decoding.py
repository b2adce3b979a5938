"""Every decoding strategy side by side on the same dev examples with one trained adapter: EX, EM, generation +
execution seconds per example, candidates per example.

    python bench/decoding.py --run RUN_DIR [--limit 100] [--workload sample] [key overrides such as eval.batch_size=16]

RUN_DIR is a training run (its config, its exported adapter/ or last checkpoint); the dev split is that run's
dataset. Each strategy runs once after a warm-up greedy pass, one after the other in this process; candidates run
in the evaluator's worker pool. Prints one table and a last line `gain execution_guided-greedy: <EX points>`;
writes bench/results/decoding.json (one entry per workload: rerun with another run dir and --workload spider).

After the timed strategies, an untimed diagnosis of greedy's failures goes to stderr and the JSON: how many fail to
execute and how many execute with a wrong result (what execution-guided decoding can and cannot act on), and how
often the beam / sample candidates hold one that runs or one that is correct (the gold is used to report only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from text2sql.data.prompt import encode_source
from text2sql.eval.candidates import generate_candidates
from text2sql.config.decoding import STRATEGIES, Decoding
from text2sql.eval.candidates import decode_local
from text2sql.eval.decoding import Timings
from text2sql.eval.execute import ExecutionEvaluator
from text2sql.eval.match import ExactMatcher
from text2sql.inference.predict import resolve_subtree, compose_config, find_weights, load_for_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchjson import RESULTS, write_json  # noqa: E402

RUNS = ("correct", "wrong_result")  # the evaluator's statuses of a prediction that executes without error


def run_strategy(model, tokenizer, sources, records, decoding, evaluator, matcher, eval_cfg) -> dict:
    timings = Timings()
    db_files = [evaluator.db_file(r["db_id"]) for r in records]
    start = time.perf_counter()
    preds = decode_local(model, tokenizer, sources, db_files, decoding, evaluator=evaluator,
                         batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens, timings=timings)
    wall = time.perf_counter() - start
    items = [(r["db_id"], r["output"], p.sql) for r, p in zip(records, preds)]
    verdicts = evaluator.evaluate(items)
    matches = matcher.match_all(items)
    n = len(records)
    return {"ex": sum(v.correct for v in verdicts) / n, "em": sum(m.exact for m in matches) / n,
            "s_per_example": wall / n, "generate_s_per_example": timings.generate_s / n,
            "execute_s_per_example": timings.execute_s / n, "candidates_per_example": sum(p.candidates for p in preds) / n,
            "runs": sum(v.status in RUNS for v in verdicts) / n}


def diagnose(model, tokenizer, sources, records, decoding: Decoding, evaluator, eval_cfg) -> dict:
    """Greedy's failures split by what execution can see, and what the fallback candidates hold for them."""
    kw = dict(batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens)
    greedy = [c[0].sql for c in generate_candidates(model, tokenizer, sources, "greedy", decoding, **kw)]
    verdicts = evaluator.evaluate([(r["db_id"], r["output"], p) for r, p in zip(records, greedy)])
    failures = [i for i, v in enumerate(verdicts) if not v.correct]
    broken = [i for i in failures if verdicts[i].status not in RUNS]
    wrong = [i for i in failures if verdicts[i].status in RUNS]
    rows = evaluator.run_sql([(evaluator.db_file(records[i]["db_id"]), greedy[i]) for i in wrong])
    out = {"examples": len(records), "greedy_failures": len(failures), "not_executing": len(broken),
           "executing_wrong": len(wrong), "executing_wrong_no_rows": sum(r["rows"] == 0 for r in rows)}
    for mode in ("beam", "sample"):
        cands = generate_candidates(model, tokenizer, [sources[i] for i in failures], mode, decoding, **kw)
        runnable, correct = {}, {}
        for i, cs in zip(failures, cands):
            others = [c.sql for c in cs if c.sql != greedy[i]]
            db_file = evaluator.db_file(records[i]["db_id"])
            runnable[i] = any(r["status"] == "ok" for r in evaluator.run_sql([(db_file, s) for s in others]))
            correct[i] = any(v.correct for v in evaluator.evaluate([(records[i]["db_id"], records[i]["output"], s)
                                                                    for s in others]))
        out[mode] = {"candidates": sum(map(len, cands)), "not_executing_with_runnable": sum(runnable[i] for i in broken),
                     "not_executing_with_correct": sum(correct[i] for i in broken),
                     "executing_wrong_with_correct": sum(correct[i] for i in wrong)}
    return out


def diagnosis_line(d: dict) -> str:
    """The diagnosis in one sentence (the JSON's `analysis`, bench/README.md's text)."""
    b, s = d["beam"], d["sample"]
    return (f"greedy fails on {d['greedy_failures']} of {d['examples']}: {d['not_executing']} do not execute (what "
            f"execution_guided acts on; a beam candidate runs for {b['not_executing_with_runnable']}, a sample for "
            f"{s['not_executing_with_runnable']}; one is correct for {b['not_executing_with_correct']} / "
            f"{s['not_executing_with_correct']}), {d['executing_wrong']} execute with a wrong result "
            f"({d['executing_wrong_no_rows']} of them return no rows, what require_rows acts on; a correct beam "
            f"candidate exists for {b['executing_wrong_with_correct']}, a correct sample for "
            f"{s['executing_wrong_with_correct']}, which no execution check can tell from the wrong ones)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run dir")
    parser.add_argument("--limit", type=int, default=100, help="the first N dev examples")
    parser.add_argument("--workload", default=None, help="name of this workload in the JSON (default: the dataset's)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--trained", default="?", help="how the run was trained (its train.py command), for the JSON")
    parser.add_argument("--json", default=str(RESULTS / "decoding.json"), help="merge the figures here ('' for none)")
    parser.add_argument("overrides", nargs="*", help="key overrides of the run's config, e.g. eval.decoding.num_beams=4")
    args = parser.parse_args()

    cfg = compose_config(args.overrides, args.run)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    weights = find_weights(args.run)
    model, tokenizer, _ = load_for_inference(cfg, dataset, weights)
    data_cfg, eval_cfg = resolve_subtree(cfg, "data"), resolve_subtree(cfg, "eval")
    records = dataset.records("dev")[: args.limit]
    sources = [encode_source(r, tokenizer, data_cfg.template, data_cfg.max_source_length,
                             system_prompt=data_cfg.system_prompt)[0] for r in records]
    base = dict(eval_cfg.decoding)
    evaluator = ExecutionEvaluator(dataset.root / "database", timeout=eval_cfg.timeout, workers=eval_cfg.workers)
    matcher = ExactMatcher(dataset.root / "tables.json", dataset.root / "database")
    workload = args.workload or cfg.dataset.name
    try:
        run_strategy(model, tokenizer, sources[:8], records[:8], Decoding(), evaluator, matcher, eval_cfg)  # warm-up
        rows = {}
        for strategy in args.strategies.split(","):
            rows[strategy] = run_strategy(model, tokenizer, sources, records, Decoding.from_config({**base, "strategy": strategy}),
                                          evaluator, matcher, eval_cfg)
            print(f"  {strategy} done", file=sys.stderr, flush=True)
        diagnosis = diagnose(model, tokenizer, sources, records, Decoding.from_config(base), evaluator, eval_cfg)
        print(f"  diagnosis: {diagnosis_line(diagnosis)}", file=sys.stderr, flush=True)
    finally:
        evaluator.close()
    greedy = rows.get("greedy")
    print(f"workload {workload}: {len(records)} dev examples, {weights[0]} {weights[1]}, model {cfg.model.name}, "
          f"torch threads {torch.get_num_threads()}, decoding {base}")
    print(f"{'strategy':<18} {'EX':>6} {'EM':>6} {'runs':>6} {'cand/ex':>8} {'gen s/ex':>9} {'exec s/ex':>10} "
          f"{'s/ex':>7} {'x greedy':>9}")
    for strategy, r in rows.items():
        ratio = r["s_per_example"] / greedy["s_per_example"] if greedy else float("nan")
        r["time_vs_greedy"] = ratio
        print(f"{strategy:<18} {r['ex']:6.3f} {r['em']:6.3f} {r['runs']:6.3f} {r['candidates_per_example']:8.2f} "
              f"{r['generate_s_per_example']:9.4f} {r['execute_s_per_example']:10.4f} {r['s_per_example']:7.4f} "
              f"{ratio:9.2f}")
    gain = 100 * (rows["execution_guided"]["ex"] - greedy["ex"]) if greedy and "execution_guided" in rows else float("nan")
    if args.json:
        save(Path(args.json), workload, {"argv": " ".join(["python bench/decoding.py", *sys.argv[1:]]),
                                         "trained": args.trained, "weights": weights[0], "model": cfg.model.name,
                                         "examples": len(records), "decoding": base, "strategies": rows,
                                         "gain_ex_points": gain, "threads": torch.get_num_threads(),
                                         "diagnosis": diagnosis, "analysis": diagnosis_line(diagnosis)})
    print(f"gain execution_guided-greedy: {gain:+.1f}")


def save(path: Path, workload: str, figures: dict) -> None:
    """Merge this workload's figures into the JSON (the other workloads' stay) and rewrite its summary."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    workloads = {**old.get("workloads", {}), workload: figures}
    first = workloads.get("sample") or figures
    eg, greedy = first["strategies"].get("execution_guided"), first["strategies"].get("greedy")
    summary = {"compares": "execution-guided decoding vs greedy, same adapter and dev examples "
                           + ", ".join(f"{w}: {f['examples']}" for w, f in workloads.items())}
    if eg and greedy:
        summary.update(ours=f"EX {eg['ex']:.3f} at {eg['s_per_example']:.3f} s/example",
                       baseline=f"EX {greedy['ex']:.3f} at {greedy['s_per_example']:.3f} s/example",
                       ratio=round(eg["time_vs_greedy"], 2), ratio_label=f"time; EX {100 * (eg['ex'] - greedy['ex']):+.1f} points")
    write_json(path, {"benchmark": "decoding", "command": "python bench/decoding.py --run RUN", "workloads": workloads,
                      "summary": summary})


if __name__ == "__main__":
    main()
