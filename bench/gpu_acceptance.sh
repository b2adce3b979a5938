#!/usr/bin/env bash
# GPU acceptance in one command: lora / qlora4 / qlora8 on one GPU, DeepSpeed ZeRO-2 and ZeRO-3 over all visible
# GPUs, generation + the EX callback on 64 Spider dev examples, resume from a checkpoint, merge -- each through
# train.py, the production path, then LoRA + EX on a random LAYERS-layer model of each chat family's shape (qwen2:
# Qwen2.5-Coder-7B, llama3: Llama-3.1-8B, mistral: Mistral-7B; template=chat). Prints one table (check, pass/fail, step time, tokens/s, peak memory, EX) and
# writes $OUT/gpu_acceptance.json. Exit 0 when every check passed. Without CUDA: prints the plan, exits 0.
#
# Usage (any CUDA box; Spider from $SPIDER_DIR or ../shared/spider, else the generated sample):
#   bench/gpu_acceptance.sh                                  # random CodeLlama-7B shape, 2 layers, 12 steps/run
#   LAYERS=8 STEPS=30 bench/gpu_acceptance.sh                # bigger; scale per-layer figures to 32 layers for 7B
#   MODEL_PATH=/models/CodeLlama-13b-Instruct-hf MODEL_PRESET=codellama13b bench/gpu_acceptance.sh   # real weights
#   bench/gpu_acceptance.sh --only lora,ex64                 # a subset
# STATUS: ran on one NVIDIA H200 on 2026-11-26 (random 2-layer CodeLlama-7B shape, real Spider): all eight checks
# pass (bench/README.md has the table). Not yet run on several GPUs. On CPU, tests/test_auto_gpu_acceptance.py runs
# the plan's lora -> resume -> merge -> predict commands with hardware=cpu appended.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu_acceptance.py "$@"
