"""QLoRA-4 + DeepSpeed ZeRO-2 on a random Llama of CodeLlama-7B shape (few layers): step time and peak memory.

Goes through the production path: the Hydra config (model=codellama7b peft=qlora4 hardware=deepspeed_zero2),
`load_model` (bitsandbytes NF4 while loading), `apply_peft`, `Text2SQLModule`, the preset's DeepSpeed strategy
and a Lightning Trainer, on random token batches of a fixed length. Run by bench/gpu_smoke.sh; needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (CodeLlama-7B has 32)")
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens per example (DB-GPT-Hub: 2048 + 512)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps (the first 2 are warm-up, not timed)")
    ap.add_argument("--peft", default="qlora4")
    ap.add_argument("--hardware", default="deepspeed_zero2")
    ap.add_argument("--out", default=None, help="write the result JSON here too")
    args = ap.parse_args()

    import lightning.pytorch as pl
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader
    from transformers import LlamaConfig, LlamaForCausalLM

    from text2sql.model.load import load_model
    from text2sql.training.module import Text2SQLModule
    from text2sql.model.peft import apply_peft, count_parameters
    from text2sql.errors import HardwareError
    from text2sql.machine.setup import check_gpus

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=codellama7b", f"peft={args.peft}", f"hardware={args.hardware}", "logger=none",
            f"data.batch_size={args.batch_size}", f"trainer.accumulate_grad_batches={args.grad_accum}",
            f"model.architecture.num_hidden_layers={args.layers}", "optim.scheduler=constant_with_warmup"])
    try:
        check_gpus(cfg.hardware)
    except HardwareError as err:
        print(f"gpu_smoke: {err}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="codellama7b-shape-") as tmp:
        arch = OmegaConf.to_container(cfg.model.architecture, resolve=True)
        torch.manual_seed(0)
        with torch.device("cpu"):
            base = LlamaForCausalLM(LlamaConfig(**arch, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                                torch_dtype="bfloat16")).to(torch.bfloat16)
        base.save_pretrained(tmp)
        del base
        torch.cuda.reset_peak_memory_stats()
        model = apply_peft(load_model(cfg.model, tmp, None, peft_cfg=cfg.peft), cfg.peft)
        trainable, total = count_parameters(model)
        load_peak = torch.cuda.max_memory_allocated()

        vocab = arch["vocab_size"]
        n = args.batch_size * args.grad_accum * args.steps
        gen = torch.Generator().manual_seed(0)
        items = [{"input_ids": torch.randint(3, vocab, (args.seq_len,), generator=gen)} for _ in range(n)]

        def collate(batch):
            ids = torch.stack([b["input_ids"] for b in batch])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

        loader = DataLoader(items, batch_size=args.batch_size, collate_fn=collate)
        times: list[float] = []

        class Timer(pl.Callback):
            def on_train_batch_start(self, trainer, *a):
                torch.cuda.synchronize()
                self.t = time.perf_counter()

            def on_train_batch_end(self, trainer, *a):
                torch.cuda.synchronize()
                times.append(time.perf_counter() - self.t)

        trainer = pl.Trainer(max_steps=args.steps, accumulate_grad_batches=args.grad_accum,
                             accelerator=cfg.hardware.accelerator, devices=cfg.hardware.devices,
                             precision=cfg.hardware.precision, strategy=instantiate(cfg.hardware.strategy),
                             gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()],
                             default_root_dir=tmp)
        torch.cuda.reset_peak_memory_stats()
        trainer.fit(Text2SQLModule(model, cfg.optim), train_dataloaders=loader)

    warm = times[2 * args.grad_accum:] or times
    micro = statistics.median(warm)
    result = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "peft": args.peft,
        "hardware": args.hardware, "layers": args.layers, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "grad_accum": args.grad_accum, "total_params": total, "trainable_params": trainable,
        "median_micro_batch_s": round(micro, 4), "optimizer_step_s": round(micro * args.grad_accum, 4),
        "tokens_per_s": round(args.batch_size * args.seq_len / micro, 1),
        "peak_mem_load_gib": round(load_peak / 2**30, 3),
        "peak_mem_train_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        "final_global_step": trainer.global_step,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
