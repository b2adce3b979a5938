"""Full-size training speed on one GPU: DB-GPT-Hub's recipe, theirs vs ours, on random weights of the real shapes.

    python bench/gpu_scale.py [--presets codellama13b,codellama7b,qwen25_coder_7b] [--budget-s 600]
        [--warmup 1 --steps 3] [--levers full_head,packed,eager,flash2,liger,compile,qlora4,zero2] [--toy]

For each preset (conf/model: its `architecture`), a random-init model of that full shape is built directly on the
GPU in bf16 and trained on Spider's real train records (our DataModule's tokenisation: llama2 template, 2048 /
512 tokens, a CodeLlama-style tokenizer learned from Spider, or `--tokenizer DIR`) with DB-GPT-Hub's LoRA recipe
(r 64 / alpha 32 on q,v; lr 2e-4; effective batch 16). Sides, alternating in this one process:

  theirs    HF Trainer + PEFT as DB-GPT-Hub's train_sft.sh configures it: micro-batch 1 x accumulation 16, bf16,
            cosine_with_restarts, no length grouping, and their prepare_model_for_training (fp32 norms, gradient
            checkpointing, fp32 head output)
  ours_mb1  what `experiment=dbgpt_hub_codellama13b_lora` runs (Text2SQLModule + TextToSQLDataModule,
            length-grouped), micro-batch 1 x 16
  ours_mbN  the same at the largest micro-batch N (16, 8, 4, 2) whose longest length-grouped batch fits, x 16/N

Each side: `--warmup` untimed optimizer steps, then `--steps` timed ones (16 examples each); step time, real
(non-pad) tokens/s, MFU (model FLOPs per token: 4 x frozen body + 6 x trainable + causal attention + the LM head at
target positions, see gpu_scale_sides.flops_per_token; the same count for every side, so the MFU ratio is the
tokens/s ratio), peak GPU memory, and the projected wall time of 8 epochs over 8,659 examples. For the first preset
also the per-epoch EX cost (batched greedy generation over the 1,034 dev prompts, max_new_tokens = p95 of gold SQL
tokens) and the levers, each at ours' micro-batch N against ours_mbN, kept only where it wins.

A time budget (`--budget-s`) skips entries that would not fit (recorded as skipped); the JSON
(bench/results/gpu_scale.json: the device under `gpu`, each ratio under a `ratio_...` key) is written after every
measurement. `--toy` runs the whole plan at toy scale on whatever device there is (tests/test_gpu_scale.py, CPU).
The last line is `ratio ours/theirs: <tokens/s of ours_mbN / theirs, first preset>`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import gpu_scale_sides as S  # noqa: E402
from benchjson import machine, write_json  # noqa: E402

PRESETS = "codellama13b,codellama7b,qwen25_coder_7b"
# lever -> (what it changes, the package it needs or None)
LEVERS = {
    "full_head": ("LM head + loss at every position (transformers' path) instead of target positions only", None),
    "packed": ("data.packing=true: each batch packed into rows with position_ids (no padding)", None),
    "eager": ("attn_implementation=eager instead of SDPA", None),
    "flash2": ("attn_implementation=flash_attention_2 (varlen kernels)", "flash_attn"),
    "liger": ("liger-kernel RoPE / RMSNorm / SwiGLU", "liger_kernel"),
    "compile": ("torch.compile of each decoder layer (regional, dynamic shapes)", None),
    "qlora4": ("QLoRA-4: NF4 base (bitsandbytes), peft=qlora4 (gradient checkpointing on)", "bitsandbytes"),
    "zero2": ("DeepSpeed ZeRO-2 on one card (hardware=deepspeed_zero2)", "deepspeed"),
}
WIN = 1.02  # a lever is kept only if it beats ours_mbN by more than this (noise between runs is ~1-2 %)


def spider_dir(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("SPIDER_DIR"), str(REPO.parent / "shared" / "spider")):
        if cand and (Path(cand) / "train_spider.json").is_file():
            return str(cand)
    return None


class Bench:
    """The run's state: arguments, data, the growing report (saved after every measurement) and the budget."""

    def __init__(self, args):
        import torch

        self.args, self.start = args, time.monotonic()
        self.gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)"
        self.peak = S.peak_tflops(self.gpu, args.peak_tflops) if torch.cuda.is_available() else None
        self.report = {"benchmark": "gpu_scale", "gpu": self.gpu, "toy": args.toy, "torch": torch.__version__,
                       "peak_tflops_bf16": self.peak, "budget_s": args.budget_s, "warmup": args.warmup,
                       "steps": args.steps, "effective_batch": S.EFFECTIVE_BATCH, "presets": {}, "skipped": [],
                       "flops_formula": " ".join(S.flops_per_token.__doc__.split("\n", 1)[1].split()),
                       "machine": {**machine(), **({"gpu": self.gpu, "gpus": 1} if self.peak is not None or
                                                   torch.cuda.is_available() else {})}}
        self.last_wall: dict[str, float] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def fits(self, what: str, preset: str) -> bool:
        """True if the entry's expected time (the last entry of this preset, else any) fits the budget left."""
        guess = self.last_wall.get(preset, max(self.last_wall.values(), default=0.0))
        if guess <= self.left():
            return True
        self.report["skipped"].append(f"{preset} {what}: budget ({self.left():.0f} s left, ~{guess:.0f} s needed)")
        print(f"  skip {preset} {what}: budget", flush=True)
        self.save()
        return False

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.report["summary"] = summary(self.report)
        write_json(self.args.json, self.report)


# ------------------------------------------------------------------------------------------------ one entry

def prepared_model(bench: Bench, arch: dict, data, lever: str | None, cfg, theirs: bool = False):
    """A fresh random base of `arch` on the device, changed as `lever` (or DB-GPT-Hub's loader, for theirs) says,
    wrapped with the config's LoRA."""
    from text2sql.model.peft import apply_peft

    base = S.build_model(arch, data.tokenizer.pad_token_id,
                         attn={"eager": "eager", "flash2": "flash_attention_2"}.get(lever, "sdpa"))
    if theirs:
        S.dbgpt_prepare(base)
    if lever == "qlora4":
        S.quantize_4bit(base)
    model = apply_peft(base, cfg.peft)
    if lever == "compile":
        S.compile_layers(model, bench.args.compile_backend)
    return model


def measure(bench: Bench, preset: str, arch: dict, data, side: str, mb: int, lever: str | None = None):
    """Train one side for warmup + steps optimizer steps on a fresh model; returns (result row, the PEFT model)."""
    from text2sql.data.datamodule import pad_batch
    from text2sql.data.packing import add_target_positions
    from text2sql.model.peft import count_parameters

    extra = [f"data.batch_size={mb}", f"trainer.accumulate_grad_batches={S.EFFECTIVE_BATCH // mb}"]
    if lever == "qlora4":
        extra.append("peft=qlora4")
    if lever == "zero2":
        extra.append("hardware=deepspeed_zero2" if S.device() == "cuda" else "hardware=deepspeed_zero2_cpu")
    cfg = S.compose(preset, bench.args.spider, extra)
    S.free_memory()
    t0 = time.perf_counter()
    model = prepared_model(bench, arch, data, lever, cfg, theirs=side == "theirs")
    S.sync()
    build_s = time.perf_counter() - t0
    trainable, _ = count_parameters(model)
    meter = S.Meter(data.tokenizer.pad_token_id)
    steps = bench.args.warmup + bench.args.steps
    data.dm.batch_size, data.dm.packing = mb, lever == "packed"
    with S.liger(model.get_base_model()) if lever == "liger" else S.nullcontext():
        train_side(bench, model, cfg, data, side, steps, meter, lever)
    row = {"side": side, "lever": lever, "micro_batch": mb, "accumulate": S.EFFECTIVE_BATCH // mb,
           "build_s": round(build_s, 2), "peak_gib": S.peak_memory_gib(), "trainable_params": trainable,
           **meter.summary(bench.args.warmup)}
    if side != "theirs" and lever in (None, "eager", "flash2"):
        longest = sorted(data.dm.train_items, key=lambda it: -len(it["input_ids"]))[:mb]
        batch = add_target_positions(pad_batch(longest, data.tokenizer.pad_token_id))
        row["attention_ops"] = S.attention_ops(model, batch)  # which SDPA kernel the longest batch runs
    return row, model


def train_side(bench: Bench, model, cfg, data, side: str, steps: int, meter, lever: str | None) -> None:
    from hydra.utils import instantiate

    try:
        if side == "theirs":
            S.run_theirs(model, cfg, data.dm, data.tokenizer, steps, meter)
        else:
            strategy = instantiate(cfg.hardware.strategy) if lever == "zero2" else None
            S.run_ours(model, cfg, data.dm, steps, meter, full_head=lever == "full_head", strategy=strategy,
                       precision=cfg.hardware.precision if lever == "zero2" else None)
    finally:
        data.dm.batch_size, data.dm.packing = 1, False


def finish_row(bench: Bench, row: dict, flops: float, data) -> dict:
    """MFU and the projected 8 epochs over 8,659 examples (at this side's real tokens/s)."""
    tps = row["tokens_per_s"]
    row["mfu"] = round(flops * tps / (bench.peak * 1e12), 4) if bench.peak else None
    epoch_s = S.SPIDER_TRAIN_EXAMPLES * data.mean_tokens / tps
    row["epoch_hours"] = round(epoch_s / 3600, 3)
    row["projected_8_epochs_hours"] = round(S.EPOCHS * epoch_s / 3600, 2)
    return row


def run_entry(bench: Bench, preset: str, arch: dict, data, name: str, side: str, mb: int, lever=None):
    """Measure one entry under the budget; record it (or its failure) in the report and save. Returns the model
    when asked to keep it (the caller frees it), else None."""
    import torch

    entry = bench.report["presets"][preset]
    if not bench.fits(name, preset):
        return None
    print(f"  [{preset}] {name}: micro-batch {mb} x {S.EFFECTIVE_BATCH // mb}", flush=True)
    start, model = time.monotonic(), None
    try:
        row, model = measure(bench, preset, arch, data, side, mb, lever)
        row = finish_row(bench, row, entry["flops_per_token"], data)
    except torch.cuda.OutOfMemoryError:
        row = {"side": side, "lever": lever, "micro_batch": mb, "error": "out of GPU memory"}
    except Exception as err:  # noqa: BLE001 - one failed entry must not lose the others
        traceback.print_exc()
        row = {"side": side, "lever": lever, "micro_batch": mb, "error": f"{type(err).__name__}: {err}"[:300]}
    bench.last_wall[preset] = time.monotonic() - start
    row["wall_s"] = round(bench.last_wall[preset], 1)
    keep_best(entry["levers"] if lever else entry["sides"], name, row)
    print_row(name, row)
    bench.save()
    return model


def keep_best(rows: dict, name: str, row: dict) -> None:
    """Repeated sides keep their fastest run (the least disturbed), with every run's tokens/s beside it."""
    old = rows.get(name)
    runs = (old or {}).get("runs_tokens_per_s", []) + [round(row["tokens_per_s"])] if "tokens_per_s" in row else []
    if old and "tokens_per_s" in old and old["tokens_per_s"] >= row.get("tokens_per_s", 0):
        old["runs_tokens_per_s"] = runs
        return
    rows[name] = {**row, "runs_tokens_per_s": runs} if runs else row


# ------------------------------------------------------------------------------------------------ the plan

def model_facts(arch: dict, cfg) -> dict:
    """Parameter counts of the preset's full shape with its LoRA, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from text2sql.model.peft import apply_peft, count_parameters

    a = dict(arch)
    config = AutoConfig.for_model(a.pop("model_type", "llama"), **a)
    with torch.device("meta"):
        model = apply_peft(AutoModelForCausalLM.from_config(config), cfg.peft)
    trainable, total = count_parameters(model)
    return {"params": total - trainable, "body_params": S.body_params(model), "trainable_params": trainable}


def probe(bench: Bench, preset: str, arch: dict, data) -> int:
    """The largest micro-batch that fits (recorded with its probe log); 1 when the budget or the probe says so."""
    from text2sql.model.peft import apply_peft

    entry = bench.report["presets"][preset]
    if bench.args.micro_batch:
        entry["largest_micro_batch"] = bench.args.micro_batch
        return bench.args.micro_batch
    if not bench.fits("micro-batch probe", preset):
        return 1
    start = time.monotonic()
    cfg = S.compose(preset, bench.args.spider)
    S.free_memory()
    model = apply_peft(S.build_model(arch, data.tokenizer.pad_token_id), cfg.peft)
    mb, log = S.probe_micro_batch(model, cfg, data.dm, [16, 8, 4, 2], bench.args.headroom)
    del model
    S.free_memory()
    entry.update(largest_micro_batch=mb, probe=log)
    bench.last_wall[preset] = time.monotonic() - start
    print(f"  [{preset}] largest micro-batch: {mb} ({log})", flush=True)
    bench.save()
    return mb


def ex_cost(bench: Bench, preset: str, data, model, cfg) -> None:
    """The per-epoch EX cost with the trained PEFT model: generation seconds and their share of an epoch."""
    entry = bench.report["presets"][preset]
    try:
        cost = S.generation_cost(model, data, bench.args.ex_limit, cfg.eval.batch_size, S.gold_sql_p95(data))
        ours = entry["sides"].get(f"ours_mb{entry['largest_micro_batch']}", {})
        if "epoch_hours" in ours:
            cost["share_of_epoch"] = round(cost["seconds_full_dev"] / (ours["epoch_hours"] * 3600 +
                                                                        cost["seconds_full_dev"]), 4)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        cost = {"error": f"{type(err).__name__}: {err}"[:300]}
    entry["ex_cost"] = cost
    print(f"  [{preset}] EX generation: {cost}", flush=True)
    bench.save()


def run_preset(bench: Bench, preset: str, data, with_ex: bool) -> None:
    """theirs, ours_mb1, (probe), ours_mbN -- alternating, `--repeats` rounds -- then the EX cost if asked."""
    try:
        arch = S.preset_arch(preset, bench.args.spider, bench.args.toy, len(data.tokenizer))
    except Exception as err:  # noqa: BLE001 - e.g. a preset another change has not added yet
        bench.report["skipped"].append(f"{preset}: {str(err).splitlines()[0][:200]}")
        print(f"  skip {preset}: {str(err).splitlines()[0][:200]}", flush=True)
        return
    cfg = S.compose(preset, bench.args.spider)
    facts = model_facts(arch, cfg)
    flops = S.flops_per_token(arch, facts["body_params"], facts["trainable_params"], data)
    entry = {"arch": arch, **facts, "flops_per_token": flops, "sides": {}, "levers": {}}
    bench.report["presets"][preset] = entry
    mb = None
    for rnd in range(bench.args.repeats):
        for name, side, m in (("theirs", "theirs", 1), ("ours_mb1", "ours", 1)):
            model = run_entry(bench, preset, arch, data, name, side, m)
            del model
        mb = mb or probe(bench, preset, arch, data)
        keep = with_ex and rnd == bench.args.repeats - 1
        model = run_entry(bench, preset, arch, data, f"ours_mb{mb}", "ours", mb) if mb > 1 or keep else None
        if keep and model is not None and bench.fits("EX cost", preset):
            ex_cost(bench, preset, data, model, cfg)
        del model
        S.free_memory()
    sides = entry["sides"]
    theirs = sides.get("theirs", {}).get("tokens_per_s")
    best, same = (sides.get(n, {}).get("tokens_per_s") for n in (f"ours_mb{mb}", "ours_mb1"))
    if theirs and best:
        bench.report[f"ratio_{preset}"] = entry["ratio_ours_theirs"] = round(best / theirs, 3)
    if theirs and same:
        bench.report[f"ratio_{preset}_mb1"] = entry["ratio_ours_mb1_theirs"] = round(same / theirs, 3)
    bench.save()


def run_levers(bench: Bench, preset: str, data) -> None:
    """Each lever at ours' micro-batch against ours_mbN; kept only where it wins by more than WIN."""
    entry = bench.report["presets"].get(preset)
    if not entry or "largest_micro_batch" not in entry:
        return
    mb = entry["largest_micro_batch"]
    base = entry["sides"].get(f"ours_mb{mb}", entry["sides"].get("ours_mb1", {})).get("tokens_per_s")
    for lever in [lv for lv in LEVERS if lv in bench.args.levers]:
        what, package = LEVERS[lever]
        if package and importlib.util.find_spec(package) is None:
            entry["levers"][lever] = {"what": what, "skipped": f"{package} not installed"}
            continue
        model = run_entry(bench, preset, entry["arch"], data, lever, "ours", mb, lever)
        del model
        S.free_memory()
        row = entry["levers"].get(lever)
        if row is None:
            continue
        row["what"] = what
        if base and "tokens_per_s" in row:
            row["vs_ours"] = round(row["tokens_per_s"] / base, 3)
            row["kept"] = row["vs_ours"] > WIN
            bench.report[f"ratio_lever_{lever}"] = row["vs_ours"]
        bench.save()


# ------------------------------------------------------------------------------------------------ output

def summary(report: dict) -> dict:
    """The bench/README.md row: the first preset measured on both sides."""
    for preset, entry in report["presets"].items():
        sides, mb = entry["sides"], entry.get("largest_micro_batch", 1)
        ours, theirs = sides.get(f"ours_mb{mb}", {}), sides.get("theirs", {})
        if "tokens_per_s" in ours and "tokens_per_s" in theirs:
            fmt = lambda r, how: (f"{r['tokens_per_s']:.0f} tokens/s" + (  # noqa: E731
                f", MFU {r['mfu']:.0%}" if r.get("mfu") is not None else "") +
                f", {r['projected_8_epochs_hours']:.1f} h / 8 epochs ({preset}, {how})")
            return {"compares": "training tokens/s at effective batch 16, DB-GPT-Hub's LoRA recipe (r 64 / alpha 32 "
                                "q,v; 2048 / 512) on random weights of the full shape, real Spider train lengths"
                                + (" (toy scale)" if report["toy"] else ""),
                    "ours": fmt(ours, f"Lightning, micro-batch {mb} x {16 // mb}, length-grouped"),
                    "baseline": fmt(theirs, "HF Trainer + PEFT as train_sft.sh, 1 x 16"),
                    "ratio": report.get(f"ratio_{preset}")}
    return {"compares": "DB-GPT-Hub's recipe at full shape, ours vs theirs", "ours": "not measured",
            "baseline": "—", "ratio": None}


def print_row(name: str, r: dict) -> None:
    if "error" in r:
        print(f"    {name:<12} FAILED: {r['error']}", flush=True)
        return
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
    print(f"    {name:<12} mb {r['micro_batch']:>2} x {r['accumulate']:<2} {r['s_per_step']:8.3f} s/step "
          f"{r['tokens_per_s']:9.0f} tok/s  MFU {mfu:>6}  peak {r['peak_gib'] or '-'} GiB  padding "
          f"{r['padding_share']:.1%}  8 epochs {r['projected_8_epochs_hours']:.2f} h", flush=True)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=PRESETS, help="conf/model presets, comma-separated (first: EX + levers)")
    ap.add_argument("--budget-s", type=float, default=600.0, help="stop starting entries past this many seconds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per side")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side (16 examples each)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds of the sides (best run counts)")
    ap.add_argument("--levers", default=",".join(LEVERS), help=f"comma list of {', '.join(LEVERS)}; '' for none")
    ap.add_argument("--micro-batch", type=int, default=None, help="ours' largest micro-batch (skips the probe)")
    ap.add_argument("--headroom", type=float, default=0.9, help="probe: peak memory must stay under this share")
    ap.add_argument("--ex-limit", type=int, default=None, help="dev prompts generated (default all 1,034)")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer dir (default: CodeLlama-style, learned, cached)")
    ap.add_argument("--spider", default=None, help="real Spider dir (default: SPIDER_DIR or ../shared/spider)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not known")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; --toy: eager)")
    ap.add_argument("--toy", action="store_true", help="the whole plan at toy scale (tiny shapes, few records)")
    ap.add_argument("--train-limit", type=int, default=None, help="tokenise only the first N train records")
    ap.add_argument("--json", default=None, help="default bench/results/gpu_scale.json (--toy: outputs/)")
    args = ap.parse_args(argv)
    args.levers = [lv.strip() for lv in args.levers.split(",") if lv.strip()]
    unknown = [lv for lv in args.levers if lv not in LEVERS]
    if unknown:
        ap.error(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
    if args.toy:
        args.train_limit = args.train_limit or 32
        args.steps = min(args.steps, 1)
        args.ex_limit = args.ex_limit or 8
    args.compile_backend = args.compile_backend or ("eager" if args.toy else "inductor")
    args.json = args.json or str(REPO / ("outputs/gpu_scale_toy.json" if args.toy else "bench/results/gpu_scale.json"))
    args.spider = spider_dir(args.spider)
    return args


def main(argv=None) -> int:
    import torch

    args = parse(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if not torch.cuda.is_available() and not args.toy:
        print(f"gpu_scale: no CUDA GPU here: nothing measured. The plan, per preset ({', '.join(presets)}): theirs, "
              f"ours_mb1, the micro-batch probe, ours_mbN; EX cost and levers ({', '.join(args.levers)}) on "
              f"{presets[0]}. `--toy` runs it at toy scale here.")
        return 0
    if args.toy:
        S.threads_for_toy()
    bench = Bench(args)
    data = S.load_data(presets[0], args.spider, 4096 if args.toy else 32016, args.tokenizer, args.train_limit,
                       toy=args.toy)
    bench.report["data"] = {
        "source": data.source, "train_examples": len(data.lengths), "tokens_mean": round(data.mean_tokens, 1),
        "tokens_p95": sorted(data.lengths)[int(0.95 * (len(data.lengths) - 1))], "tokens_max": max(data.lengths),
        "attention_span": round(data.attention_span, 1), "target_share": round(data.target_share(), 4),
        "tokenizer": args.tokenizer or f"CodeLlama-style, learned from the train text ({len(data.tokenizer)} ids)",
        "dev_examples": len(data.dm.dev_records), "gold_sql_tokens_p95": S.gold_sql_p95(data)}
    print(f"gpu_scale on {bench.gpu}: data {bench.report['data']}", flush=True)
    for i, preset in enumerate(presets):
        run_preset(bench, preset, data, with_ex=i == 0)
    run_levers(bench, presets[0], data)
    bench.save()
    print(f"wrote {args.json} ({bench.report['elapsed_s']} s; skipped: {bench.report['skipped'] or 'none'})")
    ratio = bench.report.get(f"ratio_{presets[0]}")
    print(f"ratio ours/theirs: {ratio:.2f}" if ratio is not None else "ratio ours/theirs: n/a")
    return 0 if ratio is not None else 1


if __name__ == "__main__":
    sys.exit(main())
