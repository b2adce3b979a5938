"""Training throughput: our Lightning loop vs a tuned `transformers.Trainer` + PEFT, side by side.

Both sides get the same tiny Llama (as `model=tiny` builds it for the workload), the same tokenised records
(our DataModule's), the same LoRA (`peft=lora`), batch size, optimizer steps, learning-rate schedule, gradient
clipping and seed. The baseline is what a user would write instead of us: `Trainer` + `DataCollatorForSeq2Seq`
with `train_sampling_strategy="group_by_length"` (and, once, with the Trainer's defaults: random batches).

Each side runs in its own process (so peak RSS is its own), the sides alternate and each is run `--repeats`
times; the best run of each side counts (the machine may be shared: the least disturbed run is the fairest).
Reported per side: s/step and real (non-pad) input tokens/s over the timed steps (after `--warmup`) on the
`--clock` (default `cpu`: the process's CPU time, which with `--threads 1` is the work done and barely moves
when other jobs share the cores; `wall`: elapsed time, also always reported), target
tokens, padding share, peak RSS, the mean training loss per target token, and the loss per target token of the
trained model on 64 dev records (the two sides' held-out losses must be close: same work). The last line is `ratio a/b: X.XX`, the lower of the workloads' tokens/s ratios (ours / Trainer with
length grouping).

    python bench/train_throughput.py [--workloads sample,spider] [--steps 20] [--repeats 2] [--threads 1]
        [--spider DIR] [--json bench/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchjson import write_json  # noqa: E402

# side name -> (label, what it is)
SIDES = {
    "ours": "ours (Lightning loop, data.packing as configured)",
    "ours_packed": "ours, data.packing=true",
    "ours_full_head": "ours with the LM head on every position (the loss path before this change)",
    "hf_grouped": "HF Trainer + PEFT, DataCollatorForSeq2Seq, group_by_length",
    "hf_default": "HF Trainer + PEFT, DataCollatorForSeq2Seq, defaults (random batches)",
}
BASELINE = "hf_grouped"


def spider_dir(arg: str | None) -> Path | None:
    for cand in (arg, os.environ.get("SPIDER_DIR"), str(REPO.parent / "shared" / "spider")):
        if cand and (Path(cand) / "train_spider.json").is_file():
            return Path(cand)
    return None


# ------------------------------------------------------------------------------------------------ one side


def chosen_workloads(args) -> list[str]:
    """The workloads named in `--workloads`; spider is dropped (with a line) when no Spider copy is found, and
    `args.spider` becomes the dir found (or None)."""
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if "spider" in workloads:
        found = spider_dir(args.spider)
        if found is None:
            print("skip spider: real Spider not found (--spider DIR, SPIDER_DIR or ../shared/spider)")
            workloads.remove("spider")
        args.spider = str(found) if found else None
    return workloads

def _setup(workload: str, spider: str | None, batch_size: int, train_limit: int | None, packing: bool | None,
           extra: list[str] = ()):
    """(cfg, datamodule, tokenizer, model_path): the project's own config, data and tiny model for `workload`."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from text2sql.data.datasets import corpus
    from text2sql.model.load import load_tokenizer, resolve_model_path

    overrides = ["logger=none", f"data.batch_size={batch_size}"]
    if workload == "spider":
        overrides += ["dataset=spider", f"dataset.root={spider}"]
    if train_limit:
        overrides.append(f"data.train_limit={train_limit}")
    if packing is not None:
        overrides.append(f"data.packing={str(packing).lower()}")
    overrides += list(extra)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dataset = instantiate(cfg.dataset)
    path = resolve_model_path(cfg.model, corpus=lambda: corpus(dataset, "train"))
    tokenizer = load_tokenizer(cfg.model, path)
    dm = instantiate(cfg.data, dataset=dataset, tokenizer=tokenizer)
    dm.setup("fit")
    return cfg, dm, tokenizer, path


def _model(cfg, path, tokenizer):
    import lightning.pytorch as pl

    from text2sql.model.load import load_model
    from text2sql.model.peft import apply_peft

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return apply_peft(load_model(cfg.model, path, tokenizer, peft_cfg=cfg.peft), cfg.peft)


class Meter:
    """Per optimizer step: end time, real input tokens, slots (tokens incl. padding), target tokens, loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.rows: list[dict] = []
        self._pending = None

    def batch(self, batch) -> None:
        ids, labels = batch["input_ids"], batch["labels"]
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int((ids != self.pad_id).sum())
        self._pending = {"tokens": real, "slots": ids.numel(), "targets": int((labels[:, 1:] != -100).sum())}

    def step(self, loss: float) -> None:
        self.rows.append({**self._pending, "t": time.perf_counter(), "cpu": time.process_time(), "loss": loss})

    def summary(self, warmup: int) -> dict:
        warmup = max(1, warmup)  # the clock starts at the end of the last untimed step
        timed = self.rows[warmup:]
        if not timed:
            raise SystemExit(f"error: only {len(self.rows)} steps ran; need more than --warmup {warmup}")
        wall = timed[-1]["t"] - self.rows[warmup - 1]["t"]
        cpu = timed[-1]["cpu"] - self.rows[warmup - 1]["cpu"]
        n = len(timed)
        tokens = sum(r["tokens"] for r in timed)
        slots = sum(r["slots"] for r in timed)
        targets = sum(r["targets"] for r in timed)
        all_targets = sum(r["targets"] for r in self.rows)
        return {
            "steps": len(self.rows), "timed_steps": n, "wall_s_per_step": wall / n, "cpu_s_per_step": cpu / n,
            "wall_tokens_per_s": tokens / wall, "cpu_tokens_per_s": tokens / cpu, "cpu_share": cpu / wall,
            "timed_tokens": tokens, "timed_targets": targets, "padding_share": 1 - tokens / slots,
            "tokens_total": sum(r["tokens"] for r in self.rows), "targets_total": all_targets,
            # per target token over all steps (each step's mean weighted by its targets)
            "loss_mean": sum(r["loss"] * r["targets"] for r in self.rows) / max(1, all_targets),
            "loss_first": self.rows[0]["loss"], "loss_last": self.rows[-1]["loss"],
        }


def run_ours(cfg, dm, tokenizer, path, steps: int, meter: Meter, full_head: bool = False):
    """Train `steps` optimizer steps with our loop; returns the trained (PEFT) model."""
    import lightning.pytorch as pl

    from text2sql.training.module import Text2SQLModule

    module = Text2SQLModule(_model(cfg, path, tokenizer), cfg.optim)
    if full_head:
        module._parts = False  # the fallback: logits at every position, then the same target cross-entropy

    class Timing(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.batch(batch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            meter.step(float(trainer.callback_metrics["train/loss"]))

    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision=cfg.trainer.precision,
                         gradient_clip_val=cfg.trainer.gradient_clip_val, limit_val_batches=0,
                         num_sanity_val_steps=0, log_every_n_steps=cfg.trainer.log_every_n_steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Timing()], default_root_dir=tempfile.mkdtemp(prefix="thru-"))
    trainer.fit(module, datamodule=dm)
    return module.model


def run_hf(cfg, dm, tokenizer, path, steps: int, meter: Meter, grouped: bool):
    """Train `steps` optimizer steps with transformers' Trainer; returns the trained (PEFT) model."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model = _model(cfg, path, tokenizer)
    tokenizer.padding_side = "right"  # training pads right (ours loads left-padding for generation)
    total = steps
    warmup = cfg.optim.warmup_steps if cfg.optim.warmup_steps is not None else int(cfg.optim.warmup_ratio * total)
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="thru-hf-"), per_device_train_batch_size=dm.batch_size,
        gradient_accumulation_steps=1, max_steps=steps, learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1], lr_scheduler_type=cfg.optim.scheduler,
        warmup_steps=warmup, max_grad_norm=cfg.trainer.gradient_clip_val, seed=cfg.seed,
        train_sampling_strategy="group_by_length" if grouped else "random", logging_steps=10_000,
        save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        remove_unused_columns=False,
    )

    class Counting(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.batch(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            meter.step(float(loss))
            return loss

    class Records(torch.utils.data.Dataset):
        def __len__(self):
            return len(dm.train_items)

        def __getitem__(self, i):
            return dict(dm.train_items[i])

    collator = DataCollatorForSeq2Seq(tokenizer, model=None, padding=True, label_pad_token_id=-100)
    Counting(model=model, args=args, train_dataset=Records(), data_collator=collator,
             processing_class=tokenizer).train()
    return model


def held_out_loss(model, dm, n: int = 64) -> float:
    """Mean loss per target token of the trained model on the first `n` dev records: the same yardstick for both
    sides (their training losses are taken on differently ordered batches)."""
    import torch

    from text2sql.data.datamodule import pad_batch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, min(n, len(dm.val_items)), 16):
            batch = pad_batch(dm.val_items[start:start + 16][: n - start], dm.tokenizer.pad_token_id)
            k = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * k
            count += k
    return total / max(1, count)


def child(args) -> None:
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    packing = {"ours_packed": True}.get(args.child)
    cfg, dm, tokenizer, path = _setup(args.child_workload, args.spider, args.batch_size, args.train_limit, packing,
                                    args.override)
    meter = Meter(tokenizer.pad_token_id)
    steps = args.warmup + args.steps
    if args.child.startswith("ours"):
        model = run_ours(cfg, dm, tokenizer, path, steps, meter, full_head=args.child == "ours_full_head")
    else:
        model = run_hf(cfg, dm, tokenizer, path, steps, meter, grouped=args.child == "hf_grouped")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # training's peak, before the check
    out = {"side": args.child, "workload": args.child_workload, "threads": torch.get_num_threads(),
           "batch_size": dm.batch_size, "packing": bool(dm.packing) if args.child.startswith("ours") else False,
           "train_records": len(dm.train_items),
           "peak_rss_mb": peak_rss, "held_out_loss": held_out_loss(model, dm), **meter.summary(args.warmup)}
    secs = out[f"{args.clock}_s_per_step"] * out["timed_steps"]
    out.update(clock=args.clock, s_per_step=out[f"{args.clock}_s_per_step"], tokens_per_s=out["timed_tokens"] / secs,
               target_tokens_per_s=out["timed_targets"] / secs)
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------------------ the driver

def run_side(side: str, workload: str, args) -> dict:
    from text2sql.job.ranks import LAUNCH_VARS

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--child-workload", workload,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--clock", args.clock]
    if args.spider:
        cmd += ["--spider", str(args.spider)]
    if args.train_limit:
        cmd += ["--train-limit", str(args.train_limit)]
    for o in args.override:
        cmd += ["--override", o]
    # Each side is one single-process run: rendezvous variables left by an earlier in-process DDP run (Lightning
    # sets MASTER_PORT/WORLD_SIZE in os.environ) would make HF's Trainer start torch.distributed on a taken port.
    dropped = {*LAUNCH_VARS, "GROUP_RANK", "ACCELERATE_USE_CPU", "PL_GLOBAL_SEED"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("TORCHELASTIC_")}
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.getcwd())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: side {side} on {workload} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1][len("RESULT "):])


def best(runs: list[dict]) -> dict:
    top = dict(min(runs, key=lambda r: r["s_per_step"]))
    top["runs_s_per_step"] = [round(r["s_per_step"], 4) for r in runs]
    return top


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="sample,spider", help="comma list of sample, spider")
    ap.add_argument("--sides", default="ours,hf_grouped", help=f"alternated, best of --repeats: {', '.join(SIDES)}")
    ap.add_argument("--once", default="hf_default", help="sides run once per workload (slow baselines); '' for none")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (1: steadier on a shared box)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU time (with --threads 1, the work done; steady on a shared machine); "
                         "wall: elapsed time")
    ap.add_argument("--train-limit", type=int, default=None, help="tokenise only the first N train records")
    ap.add_argument("--spider", default=None, help="real Spider dir (default: SPIDER_DIR or ../shared/spider)")
    ap.add_argument("--override", action="append", default=[], help="a Hydra override for both sides (repeatable)")
    ap.add_argument("--loss-tolerance", type=float, default=0.15,
                    help="max relative gap of the two sides' held-out losses after training")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "train_throughput.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-workload", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0

    workloads = chosen_workloads(args)
    bad = [w for w in workloads if w not in ("sample", "spider")]
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    once = [s.strip() for s in args.once.split(",") if s.strip()]
    unknown = [s for s in sides + once if s not in SIDES]
    if bad or unknown or not workloads:
        raise SystemExit(f"error: unknown workload/side {bad + unknown or 'none given'}; workloads: sample, spider; "
                         f"sides: {', '.join(SIDES)}")
    if BASELINE not in sides or "ours" not in sides:
        raise SystemExit(f"error: --sides must include ours and {BASELINE}")

    report = {"benchmark": "train_throughput", "command": " ".join(["python", "bench/train_throughput.py",
                                                                     *(argv if argv is not None else sys.argv[1:])]),
              "threads": args.threads, "clock": args.clock, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
              "batch_size": args.batch_size, "workloads": {}}
    ratios = {}
    for workload in workloads:
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(args.repeats):  # interleaved: ours, baseline, ours, baseline, ...
            for side in sides:
                runs[side].append(run_side(side, workload, args))
        results = {s: best(r) for s, r in runs.items()}
        for side in once:
            if side not in results:
                results[side] = best([run_side(side, workload, args)])
        ours, base = results["ours"], results[BASELINE]
        gap = abs(ours["held_out_loss"] - base["held_out_loss"]) / base["held_out_loss"]
        ratio = ours["tokens_per_s"] / base["tokens_per_s"]
        entry = {"sides": results, "ratio_vs_grouped": ratio, "loss_gap": gap,
                 "ratios": {s: ours["tokens_per_s"] / r["tokens_per_s"] for s, r in results.items() if s != "ours"}}
        report["workloads"][workload] = entry
        ratios[workload] = ratio
        print(f"\n== {workload}: {ours['train_records']} train records, batch {args.batch_size}, "
              f"{args.steps} timed steps after {args.warmup}, threads {args.threads}, {args.clock} clock, "
              f"best of {args.repeats} ==")
        print(f"{'side':<16}{'s/step':>8}{'tok/s':>9}{'tgt tok/s':>10}{'padding':>9}{'peak RSS':>10}"
              f"{'loss':>8}{'held-out':>9}{'wall s/step':>12}  runs s/step")
        for side, r in results.items():
            print(f"{side:<16}{r['s_per_step']:>8.3f}{r['tokens_per_s']:>9.0f}{r['target_tokens_per_s']:>10.0f}"
                  f"{r['padding_share']:>8.1%}{r['peak_rss_mb']:>8.0f}MB{r['loss_mean']:>8.3f}{r['held_out_loss']:>9.3f}"
                  f"{r['wall_s_per_step']:>12.3f}  {r['runs_s_per_step']}")
        for side, x in entry["ratios"].items():
            print(f"ours vs {side}: {x:.2f}x tokens/s")
        print(f"held-out loss per target token after training (64 dev records): ours {ours['held_out_loss']:.4f}, "
              f"{BASELINE} {base['held_out_loss']:.4f} (gap {gap:.1%}, tolerance {args.loss_tolerance:.0%}); "
              f"training loss means {ours['loss_mean']:.3f} / {base['loss_mean']:.3f} (different batch orders)")
        if not gap <= args.loss_tolerance:
            raise SystemExit(f"error: losses differ by {gap:.1%} on {workload}: the sides did not do the same work")
    low = min(ratios, key=ratios.get)
    report["ratio"], report["ratio_workload"] = ratios[low], low
    report["summary"] = {
        "ours": f"{report['workloads'][low]['sides']['ours']['tokens_per_s']:.0f} tokens/s ({low})",
        "baseline": f"{report['workloads'][low]['sides'][BASELINE]['tokens_per_s']:.0f} tokens/s ({low}, {SIDES[BASELINE]})",
        "ratio": round(ratios[low], 2),
        "compares": "training tokens/s, our Lightning loop vs HF Trainer + PEFT with length grouping, tiny Llama + LoRA, "
                    "batch 16, same records/steps/seed; lower of the workloads " + ", ".join(workloads),
    }
    if args.json:
        write_json(args.json, report)
    print(f"(tokens/s ratio on the {args.clock} clock, lower of {', '.join(f'{w} {r:.2f}' for w, r in ratios.items())};"
          " machine shared: ratios from interleaved runs, not absolute times, are what count)")
    print(f"ratio a/b: {ratios[low]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
