#!/usr/bin/env bash
# Run ON the GPU box (kind nvidia-h200-x2; repository root, carrying .devrun/cuda-build from
# scripts/device-pack.sh): LoRA r=16 all-linear training of bases split by layers over the GPUs
# (bench_pipeline_gpu: random bf16 weights made on each GPU, 1F1B or GPipe, with or without
# activation checkpointing).
# Prints one jsonl row per configuration (the bench's RESULT plus date and GPU) on stdout, in the
# fields of bench/results/gpu-multi-*.jsonl: append them there.
#   bench/pipeline_gpu.sh [CONFIGS (default: the 70B shape, 1F1B with and without checkpointing,
#                          GPipe with it; the 8B shape split over 2 GPUs and on 1 for comparison)]
# A config is "SHAPE DEVICES BATCH MICRO_BATCHES SCHEDULE CHECKPOINTING",
# e.g. "llama70b cuda:0,cuda:1 1 8 1f1b 1".
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.devrun/cuda-build/bin
. scripts/device-env.sh .devrun/cuda-build
export NCCL_NVLS_ENABLE=0
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("llama70b cuda:0,cuda:1 1 8 1f1b 1" "llama70b cuda:0,cuda:1 1 8 1f1b 0"
                                     "llama70b cuda:0,cuda:1 2 8 1f1b 1" "llama70b cuda:0,cuda:1 1 8 gpipe 1"
                                     "llama8b cuda:0,cuda:1 4 8 1f1b 0" "llama8b cuda:0 4 8 1f1b 0")
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
n=$(nvidia-smi -L | wc -l)
for c in "${configs[@]}"; do
  read -r shape devices batch micro schedule ckpt <<<"$c"
  "$bin/bench_pipeline_gpu" --shape "$shape" --devices "$devices" --batch "$batch" --micro-batches "$micro" \
      --seq 2048 --schedule "${schedule:-1f1b}" --checkpointing "${ckpt:-1}" --steps "${STEPS:-3}" --warmup 1 |
    sed -n 's/^RESULT //p' |
    python3 -c 'import json,sys,datetime
for line in sys.stdin:
    r = json.loads(line); r["date"] = datetime.date.today().isoformat(); r["gpu"] = sys.argv[1]
    print(json.dumps(r), flush=True)' "${n}x $gpu" || true  # a failed config (its error row) does not stop the rest
done
