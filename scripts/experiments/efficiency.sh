#!/usr/bin/env bash
# Issue 15's efficiency claims across model sizes, same engine and device: tokens/s and peak
# memory of full fine-tuning against LoRA r in {4, 16} on q,v and on all linear layers, with
# bench_train_gpu (random weights of each shape; bench/bench_shapes.h): one configuration per
# process, so that each row's peak memory is its own.
#
#   scripts/experiments/efficiency.sh DEVICE [SHAPES] [STEPS] [WARMUP]
#
# DEVICE  cuda (the GPU box: peak_gib = the allocator's peak reserved memory) or cpu
#         (peak_rss_mib; f32; one run at a time, OMP_NUM_THREADS as set)
# SHAPES  default "base7m base120m llama1b llama8b" on cuda, "base7m" on cpu (base7m = models/base,
#         base120m = the experiments' ~120M base, llama1b / llama8b = Llama-3.2-1B / Llama-3-8B;
#         their batch × sequence: 16×512, 16×512, 8×1024, 4×2048 tokens a step)
# STEPS   timed steps (default 8 on cuda, 4 on cpu), WARMUP untimed steps first (default 3 / 1)
# Rows (bench_train_gpu's RESULT JSON, with device, method full|lora, rank, targets, tokens_per_s,
# step_ms, peak_gib, peak_rss_mib, trainable, params; an "error" row where a configuration fails,
# e.g. full fine-tuning of Llama-3-8B does not fit one H200: 16 bytes of f32 master, gradient and
# AdamW moments per parameter) are appended to $RESULTS (default
# out/experiments/efficiency-sizes-DEVICE.jsonl); report.py --sizes tabulates them.
# One GPU call: base7m base120m llama1b take about 3 minutes; llama8b alone about 5 (its model is
# made five times); split SHAPES over calls if needed.
# BENCH (default .devrun/cuda-build/bin/bench_train_gpu when that pack exists, else
# build/bench/bench_train_gpu). DROPOUT (default 0) is LoRA's dropout; DROPOUT_MASKS
# per-projection (default, PEFT's) or per-input (train --dropout-per-input): e.g. the dropout rows
# of docs/experiments.md, DROPOUT=0.05 DROPOUT_MASKS=per-input efficiency.sh cuda "base7m base120m".
set -euo pipefail
cd "$(dirname "$0")/../.."
device=${1:?usage: efficiency.sh cuda|cpu [SHAPES] [STEPS] [WARMUP]}
case "$device" in
  cuda*) shapes=${2:-base7m base120m llama1b llama8b} steps=${3:-8} warmup=${4:-3} ;;
  cpu) shapes=${2:-base7m} steps=${3:-4} warmup=${4:-1} ;;
  *) echo "error: efficiency.sh: DEVICE must be cuda[:N] or cpu" >&2; exit 2 ;;
esac
bench=${BENCH:-build/bench/bench_train_gpu}
if [ -z "${BENCH:-}" ] && [ -d .devrun/cuda-build ] && [ "$device" != cpu ]; then
  . scripts/device-env.sh .devrun/cuda-build
  bench=.devrun/cuda-build/bin/bench_train_gpu
fi
[ -x "$bench" ] || { echo "error: no $bench (cmake --build build --target bench_train_gpu)" >&2; exit 2; }
results=${RESULTS:-out/experiments/efficiency-sizes-$device.jsonl}
mkdir -p "$(dirname "$results")"
for shape in $shapes; do
  for cfg in "full 0 all-linear" "lora 4 q_proj,v_proj" "lora 16 q_proj,v_proj" "lora 4 all-linear" "lora 16 all-linear"; do
    read -r method rank targets <<< "$cfg"
    echo "== $shape $method r=$rank $targets ($(date -u +%H:%M:%S))" >&2
    args=(--device "$device" --only "$shape" --method "$method" --targets "$targets" --checkpointing 0
          --steps "$steps" --warmup "$warmup")
    [ "$method" = lora ] && args+=(--rank "$rank" --dropout "${DROPOUT:-0}" --dropout-masks "${DROPOUT_MASKS:-per-projection}")
    "$bench" "${args[@]}" | sed -n 's/^RESULT //p' | python3 -c '
import json, sys, datetime
for line in sys.stdin:
    r = json.loads(line)
    r["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps(r))' | tee -a "$results"
  done
done
