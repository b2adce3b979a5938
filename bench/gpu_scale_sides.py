"""The measured pieces of bench/gpu_scale.py: data, a random model built on the device, one training side, the
micro-batch probe, the levers' model changes, generation cost and the FLOPs count. The driver is gpu_scale.py.

Every side trains the same tokenised records (our DataModule's) on a freshly built random model of a preset's
shape; weights never touch the CPU on a GPU box (`torch.device("cuda")` around `from_config`, bf16).
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EFFECTIVE_BATCH = 16          # DB-GPT-Hub: per_device_train_batch_size 1 x gradient_accumulation_steps 16
SPIDER_TRAIN_EXAMPLES = 8659  # train_spider + train_others: the epoch the projections are for
EPOCHS = 8
# --toy: short records (quick steps) and tiny shapes
TOY_DATA = ["dataset.max_source_length=160", "dataset.max_target_length=64", "data.val_loss_limit=8"]
TOY_ARCH = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
# dense bf16 peak of one card (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name
PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
               "A10": 125.0, "L4": 121.0, "4090": 165.2, "B200": 2250.0}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    torch._dynamo.reset()  # compiled layers' caches hold on to their modules
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


# ------------------------------------------------------------------------------------------------ config + data

def compose(preset: str, spider: str | None, extra: list[str] = ()):
    """The config `experiment=dbgpt_hub_codellama13b_lora` gives for `model=<preset>` (or a variant's overrides)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import text2sql  # noqa: F401  (registers the config schemas)

    data = ["dataset=spider", f"dataset.root={spider}"] if spider else ["dataset=sample"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[
            "experiment=dbgpt_hub_codellama13b_lora", f"model={preset}", *data, "logger=none", *extra])


def preset_arch(preset: str, spider: str | None, toy: bool, vocab: int) -> dict:
    """The preset's `architecture` (conf/model), shrunk to TOY_ARCH with the tokenizer's vocab under --toy."""
    from omegaconf import OmegaConf

    arch = OmegaConf.to_container(compose(preset, spider).model.architecture, resolve=True)
    if toy:
        grouped = arch.get("num_key_value_heads", arch["num_attention_heads"]) < arch["num_attention_heads"]
        arch.update(TOY_ARCH, num_key_value_heads=2 if grouped else TOY_ARCH["num_attention_heads"], vocab_size=vocab)
    if arch["vocab_size"] < vocab:
        raise SystemExit(f"error: preset {preset} has vocab {arch['vocab_size']} < the tokenizer's {vocab}")
    return arch


@dataclass
class Data:
    """The tokenised Spider records both sides train on, and what the projections need from them."""

    cfg: object
    dm: object
    tokenizer: object
    source: str
    lengths: list[int] = field(default_factory=list)

    @property
    def mean_tokens(self) -> float:
        return sum(self.lengths) / len(self.lengths)

    @property
    def attention_span(self) -> float:
        """Token-weighted mean sequence length (what each token attends over, before the causal half)."""
        return sum(n * n for n in self.lengths) / sum(self.lengths)

    def target_share(self) -> float:
        targets = sum(sum(1 for t in it["labels"] if t != -100) for it in self.dm.train_items)
        return targets / sum(self.lengths)


def tokenizer_for(cfg, corpus, vocab: int, given: str | None):
    """A CodeLlama-style tokenizer (text2sql.model.llama_tokenizer) learned from the train text once and cached, or
    the one at `given` (e.g. a real CodeLlama checkpoint's); unk pads, as our loader sets it."""
    from transformers import AutoTokenizer

    from text2sql.model.llama_tokenizer import train_llama_tokenizer

    key = re.sub(r"[^A-Za-z0-9.]+", "-", str(cfg.dataset.fingerprint)).strip("-")[:60]
    path = Path(given) if given else Path(cfg.paths.cache_dir).expanduser() / f"gpu_scale-tokenizer-{key}-{vocab}"
    if not (path / "tokenizer_config.json").is_file():
        if given:
            raise SystemExit(f"error: no tokenizer at {given}")
        train_llama_tokenizer(corpus(), vocab).save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.pad_token = tok.pad_token or tok.unk_token
    tok.padding_side = "left"
    return tok


def load_data(preset: str, spider: str | None, vocab: int, tokenizer: str | None, train_limit: int | None,
              toy: bool = False) -> Data:
    from hydra.utils import instantiate

    from text2sql.data.datasets import corpus

    extra = ([f"data.train_limit={train_limit}"] if train_limit else []) + (TOY_DATA if toy else [])
    cfg = compose(preset, spider, extra)
    dataset = instantiate(cfg.dataset)
    tok = tokenizer_for(cfg, lambda: corpus(dataset, "train"), vocab, tokenizer)
    dm = instantiate(cfg.data, dataset=dataset, tokenizer=tok)
    dm.setup("fit")
    return Data(cfg, dm, tok, "spider" if spider else "sample", [len(it["input_ids"]) for it in dm.train_items])


def gold_sql_p95(data: Data) -> int:
    """p95 of the dev gold SQL's token count (+ eos): random weights generate to max_new_tokens, so cap it here."""
    counts = sorted(len(data.tokenizer(r["output"], add_special_tokens=False)["input_ids"]) + 1
                    for r in data.dm.dev_records)
    return counts[min(len(counts) - 1, int(0.95 * len(counts)))]


# ------------------------------------------------------------------------------------------------ the model

def build_model(arch: dict, pad_id: int, attn: str = "sdpa"):
    """A random-init causal LM of `arch` in bf16, built on the device itself (no CPU copy of the weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(arch)
    config = AutoConfig.for_model(arch.pop("model_type", "llama"), **arch, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=pad_id)
    torch.manual_seed(0)
    with torch.device(device()):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)


def body_params(model) -> int:
    """Frozen matmul parameters every token passes through: all but embeddings, LM head and adapters."""
    skip = ("embed_tokens", "lm_head", "lora_")
    return sum(p.numel() for n, p in model.named_parameters() if not any(s in n for s in skip))


def flops_per_token(arch: dict, body: int, trainable: int, data: Data) -> float:
    """Model FLOPs per real token for LoRA on a frozen base (counted the same for every side):
    4 x frozen body (forward + activation gradients) + 6 x trainable (adapters also get weight gradients)
    + causal attention 6 x layers x hidden x span + frozen LM head 4 x vocab x hidden at target positions only.
    Recomputation (gradient checkpointing) is not useful work and is not counted."""
    attn = 6 * arch["num_hidden_layers"] * arch["hidden_size"] * data.attention_span
    head = 4 * arch["vocab_size"] * arch["hidden_size"] * data.target_share()
    return 4 * body + 6 * trainable + attn + head


def quantize_4bit(model) -> int:
    """QLoRA-4's base in place: every decoder linear becomes a bitsandbytes NF4 layer (double quantisation, bf16
    compute), quantised on the device, as `from_pretrained(quantization_config=...)` would load it."""
    import bitsandbytes as bnb

    n = 0
    for layer in model.get_decoder().layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4").to(child.weight.device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q)
                n += 1
    model.is_loaded_in_4bit = True  # PEFT's k-bit preparation and LoRA dispatch read this flag
    return n


@contextmanager
def liger(model):
    """liger-kernel's RoPE, RMSNorm and SwiGLU on this instance (our loss path has its own head, so no fused CE).
    Its RoPE is patched module-wide; the modeling module is restored on exit so later entries run without it."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    modeling = sys.modules[type(model).__module__]
    saved = dict(vars(modeling))
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    try:
        yield model
    finally:
        vars(modeling).update(saved)


def compile_layers(model, backend: str) -> None:
    """Regional torch.compile: each decoder layer (one graph shared by all layers; shapes marked dynamic)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        layer.compile(backend=backend, dynamic=True)


def attention_ops(model, batch: dict) -> list[str]:
    """The attention ops a forward of `batch` runs (profiler op names: which SDPA backend, flash or not)."""
    from torch.profiler import ProfilerActivity, profile

    keep = ("scaled_dot_product", "flash", "efficient_attention", "cudnn_attention", "fmha", "bmm")
    inputs = {k: v.to(device()) for k, v in batch.items() if k not in ("labels", "target_positions")}
    with torch.no_grad(), torch.autocast(device(), dtype=torch.bfloat16), \
            profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs, use_cache=False)
    names = {e.key for e in prof.key_averages() if any(k in e.key for k in keep)}
    return sorted(n for n in names if n.startswith("aten::_") or "flash" in n) or sorted(names)


# ------------------------------------------------------------------------------------------------ timing

class Meter:
    """Per optimizer step: end time (after a device sync) and the real / padded / target tokens it trained on.
    Token counts stay on the device until the step's sync, so counting adds no host round trip."""

    def __init__(self, pad_id: int):
        self.pad_id, self.rows, self._acc = pad_id, [], None

    def micro_batch(self, batch) -> None:
        ids = batch["input_ids"]
        real = batch["attention_mask"].sum() if "attention_mask" in batch else (ids != self.pad_id).sum()
        counts = torch.stack([real, torch.as_tensor(ids.numel(), device=ids.device),
                              (batch["labels"][:, 1:] != -100).sum()])
        self._acc = counts if self._acc is None else self._acc + counts

    def step(self) -> None:
        sync()
        real, slots, targets = (int(x) for x in self._acc.tolist())
        self.rows.append({"t": time.perf_counter(), "tokens": real, "slots": slots, "targets": targets})
        self._acc = None

    def summary(self, warmup: int) -> dict:
        warmup = max(1, warmup)
        timed = self.rows[warmup:]
        if not timed:
            raise RuntimeError(f"only {len(self.rows)} optimizer steps ran; need more than the {warmup} warm-up")
        wall = timed[-1]["t"] - self.rows[warmup - 1]["t"]
        tokens = sum(r["tokens"] for r in timed)
        step_times = [b["t"] - a["t"] for a, b in zip(self.rows[warmup - 1:], timed)]
        return {"steps": len(self.rows), "timed_steps": len(timed), "s_per_step": wall / len(timed),
                "median_s_per_step": statistics.median(step_times), "tokens_per_s": tokens / wall,
                "target_tokens_per_s": sum(r["targets"] for r in timed) / wall, "timed_tokens": tokens,
                "padding_share": 1 - tokens / max(1, sum(r["slots"] for r in timed))}


# ------------------------------------------------------------------------------------------------ the sides

def stay_on_device():
    """Lightning's single-device strategy, minus its teardown's copy of the model to the CPU (26 GB for 13B after
    every entry, and the EX generation after it would run on the CPU)."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class StayOnDevice(SingleDeviceStrategy):
        def teardown(self) -> None:
            module, self._lightning_module = self._lightning_module, None
            try:
                super().teardown()
            finally:
                self._lightning_module = module

    return StayOnDevice(device=torch.device("cuda", 0) if device() == "cuda" else torch.device("cpu"))


def run_ours(peft_model, cfg, dm, steps: int, meter: Meter, full_head: bool = False, strategy=None,
             precision: str | None = None):
    """Our path: Text2SQLModule + TextToSQLDataModule (length-grouped) under a Lightning Trainer."""
    import lightning.pytorch as pl

    from text2sql.training.module import Text2SQLModule

    module = Text2SQLModule(peft_model, cfg.optim)
    if full_head:
        module._parts = False  # logits at every position, then the same target cross-entropy

    class Timing(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.micro_batch(batch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step > len(meter.rows):
                meter.step()

    trainer = pl.Trainer(
        max_steps=steps, accelerator="gpu" if device() == "cuda" else "cpu", devices=1,
        precision=precision or ("bf16-mixed" if device() == "cuda" else cfg.trainer.precision),
        strategy=strategy or stay_on_device(), accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val, limit_val_batches=0, num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every_n_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timing()],
        default_root_dir=tempfile.mkdtemp(prefix="gpu-scale-"))
    trainer.fit(module, datamodule=dm)
    return trainer


def dbgpt_prepare(model):
    """What DB-GPT-Hub's `load_model_and_tokenizer` does to a trainable base (its prepare_model_for_training):
    norms in fp32, gradient checkpointing with input grads, the LM head's output cast to fp32."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and "norm" in name:
            p.data = p.data.to(torch.float32)
    model.enable_input_require_grads()
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    head = model.lm_head
    dtype = head.weight.dtype

    class CastOutputToFloat(torch.nn.Sequential):
        def forward(self, x):
            return super().forward(x.to(dtype)).to(torch.float32)

    model.lm_head = CastOutputToFloat(head)
    return model


def run_theirs(peft_model, cfg, dm, tokenizer, steps: int, meter: Meter) -> None:
    """DB-GPT-Hub's train_sft.sh on one GPU: HF Trainer, batch 1 x accumulation 16, bf16, cosine_with_restarts,
    lr 2e-4, no length grouping, DataCollatorForSeq2Seq with right padding."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="gpu-scale-hf-"), per_device_train_batch_size=1,
        gradient_accumulation_steps=EFFECTIVE_BATCH, max_steps=steps, learning_rate=cfg.optim.lr,
        lr_scheduler_type="cosine_with_restarts", bf16=True, logging_steps=50, save_strategy="no",
        report_to="none", use_cpu=device() == "cpu", dataloader_num_workers=0, disable_tqdm=True,
        remove_unused_columns=False, train_sampling_strategy="random", seed=cfg.seed)

    class Counting(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            meter.micro_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step()

    class Records(torch.utils.data.Dataset):
        def __len__(self):
            return len(dm.train_items)

        def __getitem__(self, i):
            return dict(dm.train_items[i])

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)
        Counting(model=peft_model, args=args, train_dataset=Records(), data_collator=collator,
                 processing_class=tokenizer, callbacks=[Clock()]).train()
    finally:
        tokenizer.padding_side = side


def probe_micro_batch(peft_model, cfg, dm, candidates: list[int], headroom: float) -> tuple[int, list[dict]]:
    """The largest micro-batch (dividing 16) whose worst length-grouped batch -- the longest examples together --
    runs forward + backward through our loss path within `headroom` of the card's memory."""
    from text2sql.data.datamodule import pad_batch
    from text2sql.data.packing import add_target_positions
    from text2sql.training.module import Text2SQLModule

    module = Text2SQLModule(peft_model, cfg.optim)
    longest = sorted(dm.train_items, key=lambda it: len(it["input_ids"]), reverse=True)
    total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    log = []
    for mb in sorted(candidates, reverse=True):
        free_memory()
        batch = {k: v.to(device()) for k, v in
                 add_target_positions(pad_batch(longest[:mb], dm.tokenizer.pad_token_id)).items()}
        try:
            with torch.autocast(device(), dtype=torch.bfloat16):
                loss_sum, _ = module.target_loss(batch)
            loss_sum.backward()
            sync()
            peak = torch.cuda.max_memory_allocated() if total else None
            fits = total is None or peak <= headroom * total
            log.append({"micro_batch": mb, "width": batch["input_ids"].shape[1], "fits": fits,
                        "peak_gib": round(peak / 2**30, 2) if peak else None})
        except torch.cuda.OutOfMemoryError:
            log.append({"micro_batch": mb, "width": batch["input_ids"].shape[1], "fits": False, "peak_gib": "oom"})
        finally:
            peft_model.zero_grad(set_to_none=True)
            loss_sum = batch = None
        if log[-1]["fits"]:
            return mb, log
    return 1, log


def generation_cost(peft_model, data: Data, limit: int | None, batch_size: int, max_new: int) -> dict:
    """Seconds of batched greedy generation (the EX callback's path) over the dev prompts, capped at `max_new`."""
    from text2sql.eval.generate import generate_sql

    items = data.dm.eval_items(limit)
    sources = [it.source_ids for it in items]
    free_memory()
    sync()
    start = time.perf_counter()
    with torch.autocast(device(), dtype=torch.bfloat16):
        generate_sql(peft_model, data.tokenizer, sources, batch_size=batch_size, max_new_tokens=max_new)
    sync()
    secs = time.perf_counter() - start
    dev = len(data.dm.dev_records)
    return {"prompts": len(sources), "dev_examples": dev, "batch_size": batch_size, "max_new_tokens": max_new,
            "seconds": round(secs, 2), "seconds_full_dev": round(secs * dev / len(sources), 2),
            "peak_gib": peak_memory_gib(), "prompt_tokens_mean": round(sum(map(len, sources)) / len(sources), 1)}


def threads_for_toy() -> None:
    """One torch thread on a shared CPU box (the toy mode's only job is to prove the plan)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
