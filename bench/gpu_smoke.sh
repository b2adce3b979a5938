#!/usr/bin/env bash
# GPU smoke benchmark: QLoRA-4 (bitsandbytes NF4) + DeepSpeed ZeRO-2 on a random Llama of CodeLlama-7B shape with
# few layers, through the production config/loading/strategy path. Prints step time, tokens/s and peak memory.
#
# STATUS: not run on a GPU yet. It was written on a CPU-only machine (no GPU lent to that session), where it stops
# at once with the one-line "needs a CUDA GPU" error; the numbers in the issue note must come from a GPU run.
#
# Usage (one CUDA GPU, ~10 GB free for the default 4 layers x 2048 tokens):
#   bench/gpu_smoke.sh                              # 4 layers, seq 2048, batch 1 x accumulate 4, 12 steps
#   LAYERS=8 SEQ_LEN=2560 bench/gpu_smoke.sh        # any gpu_smoke.py flag via env or extra args
#   bench/gpu_smoke.sh --hardware deepspeed_zero3   # another hardware preset
# Full 7B estimate: per-layer memory and time scale ~linearly with --layers (32 for CodeLlama-7B).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/gpu_smoke.json}
exec "$PY" bench/gpu_smoke.py --layers "${LAYERS:-4}" --seq-len "${SEQ_LEN:-2048}" \
  --batch-size "${BATCH_SIZE:-1}" --grad-accum "${GRAD_ACCUM:-4}" --steps "${STEPS:-12}" --out "$OUT" "$@"
