"""GRPO against continued SFT for the same CPU time, from two starts of one default run; and our GRPO step against
TRL's GRPOTrainer given our reward.

    python bench/grpo.py [--run RUN] [--budget-s 1800] [--lr 2e-4] [--sft-lr 5e-4] [--limit 200] [--trl-steps 4]

RUN is a default run trained with every epoch's checkpoint kept (without --run one is trained first:
`python train.py callbacks.model_checkpoint.save_top_k=-1` plus --default-args). Starts: its last epoch's checkpoint
(`final`) and the one after --early-epochs epochs (`early`). From each, two runs of `train.py init_from=START` get
the same training CPU time (`cpu_budget.py`: CPU seconds of the training process, so a box shared with other jobs
still gives both the same work; startup and evaluation excluded): `objective=grpo` at --lr and the SFT objective at
--sft-lr, both with a constant schedule. Before and after: dev EX and EM (greedy), pass@8 (8 seeded
samples, any correct) and the share of dev examples whose 8 samples all agree (correct or not: no GRPO signal);
from the GRPO runs their training no-signal share and reward curve. Last line: `gain grpo-sft_same_time: <EX
points>` (the better start). Then --trl-steps GRPO steps of ours (train.py) and of TRL's GRPOTrainer (in this
process, our ExecutionReward as its reward function) on the same tiny model, start, prompts per step, group size
and completion length: seconds per step and the rollout / reward / update split.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchjson import RESULTS, write_json  # noqa: E402


def train(run_dir: Path, args: list[str], log: Path) -> float:
    """`python train.py ARGS hydra.run.dir=run_dir` (skipped when it finished before: its adapter/ is there); its
    wall seconds (kept beside the run for a rerun that skips it)."""
    wall = run_dir / "bench_wall_s.txt"
    if (run_dir / "adapter").is_dir():
        return float(wall.read_text()) if wall.is_file() else float("nan")
    t0 = time.perf_counter()
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": path}  # cpu_budget.py
    with log.open("w") as out:
        code = subprocess.call([sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"error: train.py {' '.join(args)} failed ({code}); see {log}")
    seconds = time.perf_counter() - t0
    wall.write_text(f"{seconds:.1f}")
    return seconds


def csv_rows(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        rows += [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(path.open())]
    return rows


# -- scoring a checkpoint or a run's adapter ------------------------------------------------------------------------
def score(run_dir: Path, weights: tuple[str, Path], limit: int, samples: int) -> dict:
    """Dev EX / EM (greedy), pass@k and the share of examples whose k samples all agree, first `limit` examples."""
    from hydra.utils import instantiate

    from text2sql.data.prompt import encode_source
    from text2sql.eval.candidates import generate_candidates
    from text2sql.config.decoding import Decoding
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.eval.match import ExactMatcher
    from text2sql.inference.predict import resolve_subtree, compose_config, load_for_inference

    cfg = compose_config([], run_dir)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model, tokenizer, _ = load_for_inference(cfg, dataset, weights)
    data_cfg, eval_cfg = resolve_subtree(cfg, "data"), resolve_subtree(cfg, "eval")
    records = dataset.records("dev")[:limit]
    sources = [encode_source(r, tokenizer, data_cfg.template, data_cfg.max_source_length,
                             system_prompt=data_cfg.system_prompt)[0] for r in records]
    decoding = Decoding(strategy="sample", num_samples=samples, temperature=1.0, top_p=1.0, seed=0)
    kw = dict(batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens)
    start = time.perf_counter()
    greedy = [c[0].sql for c in generate_candidates(model, tokenizer, sources, "greedy", decoding, **kw)]
    sampled = generate_candidates(model, tokenizer, sources, "sample", decoding, **kw)
    with ExecutionEvaluator(dataset.db_dir("dev"), timeout=eval_cfg.timeout, workers=eval_cfg.workers,
                            style=dataset.eval_style) as ev:
        items = [(r["db_id"], r["output"], p) for r, p in zip(records, greedy)]
        ex = [v.correct for v in ev.evaluate(items)]
        flat = [(i, c.sql) for i, cs in enumerate(sampled) for c in cs]
        verdicts = ev.evaluate([(records[i]["db_id"], records[i]["output"], sql) for i, sql in flat])
    right: list[list[bool]] = [[] for _ in records]
    for (i, _), v in zip(flat, verdicts):
        right[i].append(v.correct)
    em = ExactMatcher(dataset.root / "tables.json", dataset.db_dir("dev")).match_all(items)
    n = len(records)
    return {"ex": sum(ex) / n, "em": sum(m.exact for m in em) / n, f"pass@{samples}": sum(map(any, right)) / n,
            "samples_agree": sum(all(r) or not any(r) for r in right) / n, "examples": n,
            "seconds": round(time.perf_counter() - start, 1)}


def cached(path: Path, compute) -> dict:
    """`compute()`'s scores, kept in `path`: a rerun (other settings, another start) does not score twice."""
    if not path.is_file():
        path.write_text(json.dumps(compute()))
    return json.loads(path.read_text())


# -- GRPO vs SFT for the same time -----------------------------------------------------------------------------------
def compare(start: Path, out: Path, budget_s: float, lrs: dict[str, float], grpo_args: list[str], limit: int,
            samples: int, run: Path) -> dict:
    common = [f"init_from={start}", "+callbacks.cpu_budget._target_=cpu_budget.CpuBudget",
              f"+callbacks.cpu_budget.seconds={budget_s}", "trainer.max_epochs=1000", "eval.every_n_epochs=1000",
              "optim.scheduler=constant", "optim.warmup_steps=0", "logger=csv", "trainer.log_every_n_steps=1"]
    sides = {"grpo": ["objective=grpo", f"optim.lr={lrs['grpo']}", *common, *grpo_args],
             "sft": [f"optim.lr={lrs['sft']}", *common]}
    before = cached(out / f"{start.stem}-before-{limit}.json", lambda: score(run, ("checkpoint", start), limit, samples))
    result = {"start": str(start), "budget_cpu_s": budget_s, "lr": lrs, "before": before}
    for side, args in sides.items():
        name = f"{start.stem}-{side}-lr{lrs[side]:g}-cpu{budget_s:g}" + ("-" + "-".join(grpo_args) if side == "grpo"
                                                                          and grpo_args else "")
        name = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name)
        run_dir = out / name  # a finished run with these settings is reused (train() skips it)
        wall = train(run_dir, args, out / f"{name}.log")
        logged = csv_rows(run_dir)
        rows = [r for r in logged if "train/loss" in r]
        cpu = [r["perf/cpu_s"] for r in logged if "perf/cpu_s" in r]
        entry = {"train_wall_s": round(wall, 1), "train_cpu_s": round(max(cpu), 1) if cpu else None,
                 "lr": lrs[side], "batches": len(rows),
                 "after": cached(run_dir / f"bench_score_{limit}.json",
                                 lambda: score(run_dir, ("adapter", run_dir / "adapter"), limit, samples))}
        if side == "grpo" and rows:
            entry["reward_curve"] = [round(r["grpo/reward_mean"], 4) for r in rows]
            entry["train_no_signal_share"] = round(statistics.mean(r["grpo/no_signal_share"] for r in rows), 4)
            entry["train_correct_share"] = round(statistics.mean(r["grpo/correct_share"] for r in rows), 4)
        result[side] = entry
        print(f"  {start.stem} {side}: {entry['batches']} batches, EX {entry['after']['ex']:.3f}", file=sys.stderr,
              flush=True)
    b, g, s = result["before"]["ex"], result["grpo"]["after"]["ex"], result["sft"]["after"]["ex"]
    result["gains_ex_points"] = {"grpo-start": round(100 * (g - b), 1), "sft-start": round(100 * (s - b), 1),
                                 "grpo-sft_same_time": round(100 * (g - s), 1)}
    return result


# -- seconds per GRPO step: ours vs TRL's GRPOTrainer ---------------------------------------------------------------
def ours_steps(start: Path, out: Path, steps: int, prompts: int, n: int, length: int) -> dict:
    run_dir = out / "timing-ours"
    train(run_dir, ["objective=grpo", f"init_from={start}", f"+trainer.max_steps={steps}", "logger=csv",
                    "trainer.log_every_n_steps=1", f"data.batch_size={prompts}", f"objective.num_generations={n}",
                    f"objective.max_new_tokens={length}", "eval.every_n_epochs=1000", "objective.temperature=1.0"],
          out / "timing-ours.log")
    rows = [r for r in csv_rows(run_dir) if "perf/rollout_s" in r][1:]  # the first step warms up
    parts = {k: statistics.median(r[f"perf/{k}_s"] for r in rows) for k in ("rollout", "reward", "update")}
    return {"s_per_step": round(sum(parts.values()), 3), **{f"{k}_s": round(v, 3) for k, v in parts.items()},
            "steps_timed": len(rows)}


def trl_steps(run: Path, start: Path, out: Path, steps: int, prompts: int, n: int, length: int, lr: float) -> dict:
    """TRL's GRPOTrainer on our model (the same LoRA, started from the same checkpoint) with our reward."""
    import torch
    from datasets import Dataset
    from hydra.utils import instantiate
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from text2sql.data.prompt import encode_source
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.eval.generate import extract_sql
    from text2sql.inference.predict import resolve_subtree, compose_config
    from text2sql.model.load import load_model, load_tokenizer
    from text2sql.model.peft import apply_peft
    from text2sql.objective.init_from import load_start_weights
    from text2sql.objective.reward import ExecutionReward, Sample, execute_samples

    cfg = compose_config([], run)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model_cfg, peft_cfg = resolve_subtree(cfg, "model"), resolve_subtree(cfg, "peft")
    tokenizer = load_tokenizer(model_cfg, model_cfg.path)
    model = apply_peft(load_model(model_cfg, model_cfg.path, tokenizer, peft_cfg=peft_cfg), peft_cfg)
    load_start_weights(model, start)
    data_cfg = resolve_subtree(cfg, "data")
    records = dataset.records("train")[: prompts * (steps + 1) * 4]
    texts = [tokenizer.decode(encode_source(r, tokenizer, data_cfg.template, data_cfg.max_source_length)[0],
                              skip_special_tokens=True)
             for r in records]
    train_set = Dataset.from_list([{"prompt": t, "db_id": r["db_id"], "gold": r["output"]}
                                   for t, r in zip(texts, records)])
    evaluator = ExecutionEvaluator(dataset.db_dir("train"), workers=None, style=dataset.eval_style)
    clock = {"reward": 0.0, "rollout": 0.0}
    reward = ExecutionReward()

    def execution_reward(prompts, completions, db_id, gold, **_):
        t0 = time.perf_counter()
        samples = [Sample(d, g, extract_sql(c), c) for c, d, g in zip(completions, db_id, gold)]
        values = reward(samples, execute_samples(evaluator, samples))
        clock["reward"] += time.perf_counter() - t0
        return values

    times: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock.update(reward=0.0, rollout=0.0, t0=time.perf_counter())

        def on_step_end(self, *a, **k):
            times.append({"step": time.perf_counter() - clock["t0"], "reward": clock["reward"],
                          "rollout": clock["rollout"]})

    config = GRPOConfig(output_dir=str(out / "timing-trl"), use_cpu=True, bf16=False, max_steps=steps,
                        per_device_train_batch_size=prompts * n, num_generations=n, max_completion_length=length,
                        temperature=1.0, learning_rate=lr, beta=0.0, loss_type="dapo", logging_steps=1,
                        report_to=[], save_strategy="no", disable_dropout=True, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[execution_reward], args=config, train_dataset=train_set,
                          processing_class=tokenizer, callbacks=[Timer()])
    generate = trainer._generate  # timed from outside: generation including TRL's tokenisation of the prompts

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            clock["rollout"] += time.perf_counter() - t0

    trainer._generate = timed_generate
    try:
        torch.manual_seed(0)
        trainer.train()
    finally:
        evaluator.close()
    rows = times[1:]
    parts = {k: statistics.median(r[k] for r in rows) for k in ("step", "rollout", "reward")}
    return {"s_per_step": round(parts["step"], 3), "rollout_s": round(parts["rollout"], 3),
            "reward_s": round(parts["reward"], 3), "update_s": round(parts["step"] - parts["rollout"] - parts["reward"], 3),
            "steps_timed": len(rows)}


def timing(run: Path, start: Path, args) -> dict:
    """Ours and TRL's GRPO steps, interleaved `--timing-repeats` times; each side's fastest run is kept."""
    import shutil

    shape = dict(steps=args.trl_steps + 1, prompts=4, n=8, length=48)
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for k in range(args.timing_repeats):
        shutil.rmtree(args.out / "timing-ours", ignore_errors=True)
        runs["ours"].append(ours_steps(start, args.out, **shape))
        runs["trl"].append(trl_steps(run, start, args.out, **shape, lr=args.lr))
    best = {side: min(r, key=lambda x: x["s_per_step"]) for side, r in runs.items()}
    return {"setup": f"tiny model + LoRA from the final start, 4 prompts x 8 samples, 48 new tokens, CPU, best of "
                     f"{args.timing_repeats} interleaved runs",
            **best, "runs_s_per_step": {side: [x["s_per_step"] for x in r] for side, r in runs.items()}}


def readme_lines(r: dict) -> list[str]:
    """bench/README.md's GRPO section (bench/make_readme.py calls this)."""
    lines = ["", "## GRPO vs continued SFT, and ours vs TRL (`bench/grpo.py`)", "", r.get("note", ""), "",
             "| start | side | lr | train CPU s | wall s | batches | EX | EM | pass@8 | samples agree | EX vs start | "
             "train no-signal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in r["starts"].items():
        b = c["before"]
        lines.append(f"| {name} | start | — | — | — | — | {b['ex']:.3f} | {b['em']:.3f} | {b['pass@8']:.3f} | "
                     f"{b['samples_agree']:.3f} | — | — |")
        for side in ("grpo", "sft"):
            e, a = c[side], c[side]["after"]
            lines.append(f"| {name} | {side} | {e.get('lr', '—')} | {e.get('train_cpu_s', '—')} | {e['train_wall_s']} | "
                         f"{e['batches']} | {a['ex']:.3f} | {a['em']:.3f} | {a['pass@8']:.3f} | "
                         f"{a['samples_agree']:.3f} | {100 * (a['ex'] - b['ex']):+.1f} | "
                         f"{e.get('train_no_signal_share', '—')} |")
    lines += ["", "Commands: " + "; ".join(f"{n}: `{c['command']}`" for n, c in r["starts"].items() if "command" in c)]
    t = r.get("timing")
    if t:
        lines += ["", f"GRPO step timing ({t['setup']}), median seconds per step after one warm-up step:", "",
                  "| side | s/step | rollout | reward | update |", "|---|---|---|---|---|"]
        for side in ("ours", "trl"):
            if side in t:
                s = t[side]
                lines.append(f"| {side} | {s['s_per_step']} | {s['rollout_s']} | {s['reward_s']} | {s['update_s']} |")
    lines += ["", f"`gain grpo-sft_same_time: {r['gain_grpo_sft_same_time']:+.1f}` EX points ({r['gain_start']} start)."]
    if r.get("analysis"):
        lines += ["", r["analysis"]]
    return lines


def _argv() -> list[str]:
    """This invocation's arguments as typed, without --note / --analysis (prose, not settings)."""
    argv = sys.argv[1:]
    for flag in ("--note", "--analysis"):
        if flag in argv:
            del argv[argv.index(flag): argv.index(flag) + 2]
    return argv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=None, help="a default run with every epoch's checkpoint kept")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_grpo", help="where its runs go")
    p.add_argument("--default-args", default="", help="extra train.py overrides for the default run it trains")
    p.add_argument("--early-epochs", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=1800.0,
                   help="training CPU seconds per side and start (all threads of the training process; 1800: 15 "
                        "minutes of both cores)")
    p.add_argument("--lr", type=float, default=2e-4, help="GRPO's learning rate (constant)")
    p.add_argument("--sft-lr", type=float, default=5e-4, help="continued SFT's learning rate (constant)")
    p.add_argument("--starts", default="final,early", help="which starts to compare (final, early)")
    p.add_argument("--merge", type=Path, default=None,
                   help="a JSON another invocation wrote (e.g. --starts early with another --budget-s): its starts "
                        "join this record")
    p.add_argument("--grpo-args", default="", help="extra overrides for the GRPO side, e.g. objective.beta=0.04")
    p.add_argument("--limit", type=int, default=200, help="dev examples scored")
    p.add_argument("--trl-steps", type=int, default=4, help="timed GRPO steps per side (0: skip the timing)")
    p.add_argument("--note", default="", help="what to say about this measurement in bench/README.md")
    p.add_argument("--analysis", default=None, help="what the figures mean (goals met or missed, why), for the README")
    p.add_argument("--json", default=str(RESULTS / "grpo.json"))
    p.add_argument("--timing-only", action="store_true", help="rerun only the step timing into the existing JSON")
    p.add_argument("--timing-repeats", type=int, default=2, help="interleaved timing runs per side (best kept)")
    args = p.parse_args()
    if args.timing_only:
        record = json.loads(Path(args.json).read_text())
        record["analysis"] = args.analysis or record.get("analysis")
        run = Path(record["run"])
        record["timing"] = t = timing(run, sorted(run.glob("checkpoints/epoch*.ckpt"))[-1], args)
        record["summary"]["ratio"] = round(t["trl"]["s_per_step"] / t["ours"]["s_per_step"], 2)
        write_json(args.json, record)
        print(f"s/step ours {record['timing']['ours']['s_per_step']} trl {record['timing']['trl']['s_per_step']}")
        return

    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run or args.out / "default"
    if args.run is None:
        train(run, ["callbacks.model_checkpoint.save_top_k=-1", "logger=none", *args.default_args.split()],
              args.out / "default.log")
    epochs = sorted(run.glob("checkpoints/epoch*.ckpt"))
    starts = {"final": epochs[-1], "early": run / "checkpoints" / f"epoch{args.early_epochs - 1:02d}.ckpt"}
    lrs = {"grpo": args.lr, "sft": args.sft_lr}
    results = {name: compare(starts[name], args.out, args.budget_s, lrs, args.grpo_args.split(), args.limit, 8, run)
               for name in args.starts.split(",")}
    command = "python " + shlex.join(["bench/grpo.py", *_argv()])  # as typed, without the prose flags
    for name in results:
        results[name]["command"] = command
    if args.merge:  # starts another invocation measured (another budget, run beside this one) join this record
        results = {**json.loads(args.merge.read_text())["starts"], **results}
    record = {"benchmark": "grpo", "run": str(run), "note": args.note,
              "analysis": args.analysis,
              "grpo_args": args.grpo_args, "starts": results}
    if args.trl_steps:
        record["timing"] = timing(run, starts["final"], args)
    gains = {name: r["gains_ex_points"]["grpo-sft_same_time"] for name, r in results.items()}
    best = max(gains, key=gains.get)
    record.update(gain_grpo_sft_same_time=gains[best], gain_start=best)
    t = record.get("timing", {})
    record["summary"] = {
        "compares": "GRPO vs continued SFT for the same CPU seconds of training from the default run's "
                    + ", ".join(f"{n} ({r['budget_cpu_s']:.0f} CPU s)" for n, r in results.items())
                    + f" checkpoints; dev EX on {args.limit}",
        "ours": "; ".join(f"{n}: GRPO EX {r['grpo']['after']['ex']:.3f}" for n, r in results.items()),
        "baseline": "; ".join(f"{n}: SFT EX {r['sft']['after']['ex']:.3f}" for n, r in results.items()),
        **({"ratio": round(t["trl"]["s_per_step"] / t["ours"]["s_per_step"], 2),
            "ratio_label": "TRL s/step / ours"} if "trl" in t else {})}
    if args.json:  # bench/README.md shows the command
        write_json(args.json, {"command": command, **record})
    print(json.dumps({n: r["gains_ex_points"] for n, r in results.items()}, indent=1))
    if t:
        print(f"s/step ours {t['ours']['s_per_step']} trl {t.get('trl', {}).get('s_per_step')}")
    print(f"gain grpo-sft_same_time: {gains[best]:+.1f}")


if __name__ == "__main__":
    main()
