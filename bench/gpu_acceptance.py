"""GPU acceptance in one command: does the production path (train.py) work on this CUDA box? Run by gpu_acceptance.sh.

Checks, in order, each a real `python train.py ...` run (Hydra config, loading, PEFT, strategy, Lightning, the EX
callback, checkpoints, export), and one `text2sql merge`:

  lora / qlora4 / qlora8      one GPU (hardware=gpu; qlora4 gives no hardware=: hardware=auto must choose gpu)
  zero2 / zero3               DeepSpeed ZeRO-2 / ZeRO-3 over all visible GPUs
  ex64                        generation + the EX callback on 64 Spider dev examples
  resume                      a second epoch from the lora run's checkpoints/last.ckpt
  merge                       the lora run's adapter merged into its base
  predict                     `text2sql predict` with the lora run: generation must run on the GPU (cuda:0)
  qwen2 / llama3 / mistral    LoRA + EX on a random LAYERS-layer model of Qwen2.5-Coder-7B / Llama-3.1-8B /
                              Mistral-7B shape (q/k/v biases, grouped-query attention) with a locally learned
                              tokenizer carrying the family's specials and chat template (template=chat)

The model is a random CodeLlama-7B-shaped Llama with LAYERS decoder layers (no download) and a CodeLlama-style
tokenizer learned from the dataset (text2sql.model.llama_tokenizer), or the real weights with MODEL_PATH. It prints
one table (check, pass/fail, step time, tokens/s, peak memory, EX) and writes JSON. Without CUDA it prints the plan
and exits 0: nothing is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from benchjson import write_json  # noqa: E402
# the chat-model families: a random few-layer model of each flagship preset's shape, trained through train.py
FAMILIES = {"qwen2": "qwen25_coder_7b", "llama3": "llama31_8b", "mistral": "mistral_7b"}
CHECKS = ("lora", "qlora4", "qlora8", "zero2", "zero3", "ex64", "resume", "merge", "predict", *FAMILIES)
PREDICT_N = 8  # dev examples `predict` generates


# ---- the callback each train.py run carries (+callbacks.acceptance._target_=gpu_acceptance.stats_callback) ----

def stats_callback(out: str):
    """Median step time, tokens/s and peak GPU memory of a run, written by rank 0 to `out` at the end of fit."""
    import lightning.pytorch as pl
    import torch

    cuda = torch.cuda.is_available()  # False only when the plumbing is tried on a CPU box (hardware=cpu)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Stats(pl.Callback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []

        def on_train_start(self, trainer, pl_module):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            self.times.append(time.perf_counter() - self.t)
            self.tokens.append(int(batch["attention_mask"].sum()))

        def on_fit_end(self, trainer, pl_module):
            if trainer.global_rank != 0:
                return
            warm = slice(2, None) if len(self.times) > 4 else slice(None)  # the first steps compile/allocate
            times, tokens = self.times[warm], self.tokens[warm]
            Path(out).write_text(json.dumps({
                "steps": len(self.times),
                "step_s": round(statistics.median(times), 4) if times else None,
                "tokens_per_s": round(sum(tokens) * trainer.world_size / sum(times), 1) if times else None,
                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                "world_size": trainer.world_size,
            }))

    return Stats()


# ---- the plan -------------------------------------------------------------------------------------------------

def spider_root() -> str | None:
    for cand in (os.environ.get("SPIDER_DIR"), REPO.parent / "shared" / "spider", REPO / "data" / "spider"):
        if cand and (Path(cand) / "dev.json").is_file():
            return str(cand)
    return None


def plan(args, model_dir: str, gpus: int, out: Path) -> list[tuple[str, list[str]]]:
    """(check, command) pairs; `resume` and `merge` read the lora run's directory."""
    spider = spider_root()
    data = ["dataset=spider", f"dataset.root={spider}"] if spider else ["dataset=sample"]
    base = [sys.executable, "train.py", f"model={args.preset}", f"model.path={model_dir}", *data, "logger=none",
            "trainer.max_epochs=1", f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=2",
            f"data.batch_size={args.batch_size}", "trainer.accumulate_grad_batches=1",
            f"data.train_limit={args.steps * args.batch_size * max(gpus, 1)}", "data.val_loss_limit=16",
            "eval.limit=8", "eval.max_new_tokens=32", "+callbacks.acceptance._target_=gpu_acceptance.stats_callback"]

    def run(name, *extra):
        return [*base, f"hydra.run.dir={out / name}", f"+callbacks.acceptance.out={out / name / 'stats.json'}",
                *extra]

    def family(name):
        preset = FAMILIES[name]
        cmd = [*base, f"hydra.run.dir={out / name}", f"+callbacks.acceptance.out={out / name / 'stats.json'}",
               "peft=lora", "hardware=gpu"]
        cmd[2:4] = [f"model={preset}", f"model.path={family_dir(out, preset, args.layers)}"]
        return cmd

    every = f"hardware.devices={max(gpus, 1)}"
    lora_ckpt = out / "lora" / "checkpoints" / "last.ckpt"
    return [
        ("lora", run("lora", "peft=lora", "hardware=gpu")),
        ("qlora4", run("qlora4", "peft=qlora4")),  # the design-card command: hardware=auto must pick the GPU
        ("qlora8", run("qlora8", "peft=qlora8", "hardware=gpu")),
        ("zero2", run("zero2", "peft=lora", "hardware=deepspeed_zero2", every)),
        ("zero3", run("zero3", "peft=lora", "hardware=deepspeed_zero3", every)),
        ("ex64", run("ex64", "peft=lora", "hardware=gpu", "eval.limit=64", "eval.max_new_tokens=128")),
        ("resume", run("resume", "peft=lora", "hardware=gpu", "trainer.max_epochs=2", f"ckpt_path={lora_ckpt}")),
        ("merge", [sys.executable, "-m", "text2sql", "merge", "--adapter", str(out / "lora"), "--base", model_dir,
                   "--out", str(out / "merged"), "--overwrite"]),
        ("predict", [sys.executable, "-m", "text2sql", "predict", "--run", str(out / "lora"), "--limit",
                     str(PREDICT_N), "--max-new-tokens", "32", "--no-progress", "--out",
                     str(out / "predict" / "pred.sql")]),
        *((name, family(name)) for name in FAMILIES),
    ]


def family_dir(out: Path, preset: str, layers: int) -> Path:
    return out / f"random-{preset}-{layers}layers"


def build_random_family(out_dir: Path, layers: int, preset: str, head_dim: int | None = None) -> str:
    """A random bf16 model of the chat preset's architecture (`model_type`, biases, grouped-query attention) with
    `layers` layers and a byte-level BPE tokenizer learned from the dataset with the family's specials and chat
    template (Qwen: ChatML, Llama 3: its headers; Mistral: a SentencePiece-style one with [INST] turns). The
    vocabulary is the learned tokenizer's (every generated id decodes), not the preset's 32k-152k.

    `head_dim`: None keeps the preset's width (the GPU plan); a small value keeps its head counts (so the
    grouped-query ratio) at that head size and a 4x MLP: the CPU rehearsal of the same code path at ~1/200 the cost."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM

    from text2sql.data.datasets import InstructionDataset, corpus
    from text2sql.data.sample import ensure_sample
    from text2sql.model.chat_tokenizers import train_chat_tokenizer
    from text2sql.model.llama_tokenizer import train_llama_tokenizer
    from text2sql.model.load import architecture_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={preset}", f"model.architecture.num_hidden_layers={layers}"])
    arch = OmegaConf.to_container(cfg.model.architecture, resolve=True)
    if head_dim is not None:
        arch.update(hidden_size=arch["num_attention_heads"] * head_dim,
                    intermediate_size=4 * arch["num_attention_heads"] * head_dim)
    spider = spider_root()
    dataset = InstructionDataset(spider or ensure_sample(str(out_dir.parent / "sample"), seed=0, n_train=3000, n_dev=200))
    if arch["model_type"] == "mistral":
        tokenizer = train_llama_tokenizer(corpus(dataset, "train"), 4096)
        tokenizer.chat_template = MISTRAL_TEMPLATE
    else:
        style = "qwen" if arch["model_type"] == "qwen2" else "llama3"
        tokenizer = train_chat_tokenizer(style, corpus(dataset, "train"), 4096, pre_tokenizers.ByteLevel(add_prefix_space=False))
    config = architecture_config({**arch, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                  "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


# Mistral-Instruct's turn framing (v0.3 folds a system prompt into the last user turn; the stand-in drops it)
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                    "'[/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}"
                    "{% endfor %}")


def build_random_model(out_dir: Path, layers: int, preset: str) -> str:
    """A random Llama of the preset's CodeLlama shape with `layers` layers, bf16, and a CodeLlama-style tokenizer
    padded with unused specials to the preset's vocab size (so generated ids always decode)."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from text2sql.data.datasets import InstructionDataset, corpus
    from text2sql.data.sample import ensure_sample
    from text2sql.model.llama_tokenizer import train_llama_tokenizer

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train",
                      overrides=[f"model={preset}", f"model.architecture.num_hidden_layers={layers}"])
    arch = OmegaConf.to_container(cfg.model.architecture, resolve=True)
    # CodeLlama presets give the vocab in the architecture; the CPU stand-in (tiny_codellama) as a build bound
    arch.setdefault("vocab_size", OmegaConf.select(cfg, "model.build.vocab_size"))
    spider = spider_root()
    dataset = InstructionDataset(spider or ensure_sample(str(out_dir.parent / "sample"), seed=0, n_train=3000, n_dev=200))
    tokenizer = train_llama_tokenizer(corpus(dataset, "train"), arch["vocab_size"])
    tokenizer.add_special_tokens({"additional_special_tokens": [
        f"<unused_{i}>" for i in range(arch["vocab_size"] - len(tokenizer))]})
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**arch, bos_token_id=1, eos_token_id=2, pad_token_id=None))
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_result(name: str, out: Path, proc: subprocess.CompletedProcess, wall: float) -> dict:
    row = {"check": name, "ok": proc.returncode == 0, "wall_s": round(wall, 1), "step_s": None, "tokens_per_s": None,
           "peak_mem_gib": None, "ex": None, "error": None}
    stats = out / name / "stats.json"
    if stats.is_file():
        row.update({k: v for k, v in json.loads(stats.read_text()).items() if k in row or k == "world_size"})
    metrics = out / name / "metrics.json"
    if metrics.is_file():
        record = json.loads(metrics.read_text())
        row["ex"] = record["final"].get("val/execution_accuracy")
        row["ok"] = row["ok"] and record["status"] == "ok"
        if name == "resume":  # the second epoch ran on top of the restored first one
            row["ok"] = row["ok"] and any(r.get("epoch") == 1 for r in record["history"])
        if name == "qlora4":  # no hardware= given: the default, hardware=auto, must have chosen the GPU preset
            row["ok"] = row["ok"] and "hardware=auto chose gpu" in (proc.stdout or "") + (proc.stderr or "")
        if name == "ex64":
            preds = out / name / "predictions" / "epoch_0.jsonl"
            row["ok"] = row["ok"] and preds.is_file() and len(preds.read_text().splitlines()) == 64
    if name == "merge":
        row["ok"] = row["ok"] and (out / "merged" / "config.json").is_file()
    if name == "predict":  # every example predicted, on the device this box should use (its GPU, else the CPU)
        pred = out / "predict" / "pred.sql"
        device = "cuda:0" if _cuda() else "cpu"
        row["ok"] = (row["ok"] and pred.is_file() and len(pred.read_text().splitlines()) == PREDICT_N
                     and f"generating on {device}" in (proc.stderr or ""))
    if not row["ok"]:
        tail = [line for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
        row["error"] = tail[-1][:300] if tail else f"exit {proc.returncode}"
    return row


def summary(rows: list[dict]) -> dict:
    """The bench/README.md row: which checks passed, and the lora step's speed and memory."""
    passed = [r["check"] for r in rows if r["ok"]]
    failed = [r["check"] for r in rows if not r["ok"]]
    lora = next((r for r in rows if r["check"] == "lora" and r["step_s"]), None)
    return {"compares": "the production path (train.py, merge) on one CUDA box: " + ", ".join(r["check"] for r in rows),
            "ours": f"{len(passed)}/{len(rows)} passed" + (f" (failed: {', '.join(failed)})" if failed else "") + (
                f"; lora {lora['step_s']:.3f} s/step, {lora['peak_mem_gib']:.2f} GiB" if lora else ""),
            "baseline": "—"}


def print_table(rows: list[dict]) -> None:
    fmt = "{:<8} {:<5} {:>9} {:>10} {:>13} {:>6} {:>8}"
    print(fmt.format("check", "pass", "step s", "tokens/s", "peak mem GiB", "EX", "wall s"))
    for r in rows:
        cell = lambda v, f="{}": "-" if v is None else f.format(v)  # noqa: E731
        print(fmt.format(r["check"], "PASS" if r["ok"] else "FAIL", cell(r["step_s"], "{:.3f}"),
                         cell(r["tokens_per_s"], "{:.0f}"), cell(r["peak_mem_gib"], "{:.2f}"),
                         cell(r["ex"], "{:.3f}"), cell(r["wall_s"])))
        if r["error"]:
            print(f"         {r['error']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=int(os.environ.get("LAYERS", 2)),
                    help="decoder layers of the random model (CodeLlama-7B has 32)")
    ap.add_argument("--preset", default=os.environ.get("MODEL_PRESET", "codellama7b"), help="the model preset")
    ap.add_argument("--model-path", default=os.environ.get("MODEL_PATH"), help="real weights instead of random ones")
    ap.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", 12)), help="train batches per run")
    ap.add_argument("--batch-size", type=int, default=int(os.environ.get("BATCH_SIZE", 1)))
    ap.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_acceptance"),
                    help="run dirs and gpu_acceptance.json go here")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per check")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "gpu_acceptance.json"),
                    help="the bench/README.md record ('' for none)")
    args = ap.parse_args(argv)

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = Path(args.out).resolve()
    model_dir = args.model_path or str(out / f"random-{args.preset}-{args.layers}layers")
    steps = plan(args, model_dir, gpus, out)
    if args.only:
        wanted = set(args.only.split(","))
        steps = [s for s in steps if s[0] in wanted]
    if not gpus:
        print("gpu_acceptance: no CUDA GPU here (torch %s%s): nothing run, this is the plan." % (
            torch.__version__, "" if torch.version.cuda else ", a CPU-only build"))
        what = f"the weights at {args.model_path}" if args.model_path else (
            f"a random {args.preset}-shaped Llama with {args.layers} layers, built into {model_dir}")
        print(f"model: {what}; data: {spider_root() or 'the generated sample (no Spider found)'}")
        common = steps[0][1][1:-4]  # what every train.py check shares (the lora check's own 4 keys come last)
        print(f"every train.py check: {' '.join(common)}")
        for name, cmd in steps:
            own = cmd[1 + len(common):] if cmd[1:1 + len(common)] == common else cmd[1:]
            print(f"  [{name}] {' '.join(own)}")
        print("Run it on a CUDA box: bench/gpu_acceptance.sh (LAYERS, STEPS, MODEL_PATH, OUT as env vars).")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    if not args.model_path and not (Path(model_dir) / "config.json").is_file():
        print(f"building {model_dir} ...", flush=True)
        build_random_model(Path(model_dir), args.layers, args.preset)
    for name in (n for n, _ in steps if n in FAMILIES):
        family = family_dir(out, FAMILIES[name], args.layers)
        if not (family / "config.json").is_file():
            print(f"building {family} ...", flush=True)
            build_random_family(family, args.layers, FAMILIES[name])
    path = os.pathsep.join([str(REPO / "bench"), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path,
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    rows: list[dict] = []
    report = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__, "model": model_dir,
              "layers": None if args.model_path else args.layers, "data": spider_root() or "sample",
              "steps": args.steps, "batch_size": args.batch_size, "checks": rows}
    for name, cmd in steps:
        if name != "merge":
            shutil.rmtree(out / name, ignore_errors=True)
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {args.timeout} s")
        rows.append(read_result(name, out, proc, time.monotonic() - start))
        (out / f"{name}.log").write_text((proc.stdout or "") + (proc.stderr or ""))
        row = rows[-1]  # one line per check as it ends, and the JSON so far: a run cut short still reports
        print(f"[{name}] {'PASS' if row['ok'] else 'FAIL'} in {row['wall_s']} s" +
              (f": {row['error']}" if row["error"] else ""), flush=True)
        (out / "gpu_acceptance.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json and rows:
        write_json(args.json, {"benchmark": "gpu_acceptance", **report, "machine": {
            "gpu": report["gpu"], "gpus": gpus, "cores": os.cpu_count()}, "summary": summary(rows)})
    print(f"\n{report['gpu']} x {gpus}, model {model_dir}")
    print_table(rows)
    print(f"wrote {out / 'gpu_acceptance.json'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
