#!/usr/bin/env bash
# Full-size training speed on one GPU in one command: DB-GPT-Hub's CodeLlama-13B LoRA recipe (and 7B, Qwen2.5-Coder-7B)
# on random weights of the full shape, theirs (HF Trainer + PEFT as train_sft.sh) vs ours, MFU, projected 8-epoch
# hours, the per-epoch EX generation cost and the GPU levers. Writes bench/results/gpu_scale.json after every
# measurement; the last line is `ratio ours/theirs: X`. Any bench/gpu_scale.py flag passes through.
#
# Usage (one CUDA GPU, ~15 min of it in all; Spider from $SPIDER_DIR or ../shared/spider):
#   bench/gpu_scale.sh                                   # default plan, --budget-s 600
#   bench/gpu_scale.sh --presets codellama13b --levers compile,qlora4 --budget-s 300
#   WHEELS=wheels bench/gpu_scale.sh                     # install the wheels in ./wheels first (a bare GPU image)
#   TOKENIZER=DIR bench/gpu_scale.sh                     # a tokenizer built beforehand (saves ~1 min)
#   bench/gpu_scale.sh --json "$OUT/gpu_scale.json"      # the result somewhere else (a device box's $OUT)
# On a bare GPU image the packages it lacks travel as wheels (as for gpu_acceptance.sh: hydra-core, omegaconf,
# antlr4-python3-runtime, transformers, peft, lightning, deepspeed, bitsandbytes, sqlglot, sqlparse, pydantic,
# and liger-kernel for that lever): `pip download -d wheels <pkg>==<version> --no-deps` here, carry ./wheels.
# STATUS: not run on a GPU yet (written in a session with no GPU lent); `python bench/gpu_scale.py --toy` runs the
# whole plan at toy scale on the CPU (tests/test_gpu_scale.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # sides alternate in one process
export TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled HF_HUB_OFFLINE=1
exec "$PY" bench/gpu_scale.py ${TOKENIZER:+--tokenizer "$TOKENIZER"} "$@"
