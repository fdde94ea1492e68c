#!/usr/bin/env bash
# Issue 15, task (1): KJV Bible language modelling, held out by book, on the bundled base model:
# full fine-tuning against LoRA by rank, by adapted weights and by alpha, and DoRA.
#
#   scripts/experiments/kjv.sh [quality|efficiency|all]      (default: all)
#
# quality:    full; LoRA q,v r in {1,4,8,16,64} (alpha 2r); r=8 targets q / v / q,k,v,o /
#             all-linear; r=8 q,v alpha in {8, 32}; DoRA r=8 q,v
# efficiency: full, LoRA r in {4,16} x {q,v, all-linear}, interleaved, twice (speed and peak
#             memory only matter when the machine is otherwise idle: see host_load in each row)
# Each run appends one row to $RESULTS (scripts/experiments/run_one.py says what a row holds).
# Knobs (environment): RESULTS (default out/experiments/results.jsonl; the efficiency rows go to
# EFF_RESULTS, default out/experiments/efficiency.jsonl), STEPS (200), BATCH (8),
# SEQ_LEN (128), SEEDS ("1"), DEVICE (cpu; cuda for the GPU box), LOWRANK (build/lowrank),
# MODEL (models/base), LR_FULL (1e-3), LR_LORA (3e-3), EFF_STEPS (60: the efficiency runs, which
# train only: no eval), EFF_ROUNDS (2: repeats of the efficiency set, interleaved),
# JOBS (1): the quality runs on JOBS workers at once, each with OMP_NUM_THREADS=THREADS (default:
# the cores / JOBS); a run whose row is already in $RESULTS is skipped, so a stopped set resumes.
# The efficiency runs always run one at a time.
# Needs the `bible` command (Debian bible-kjv; scripts/setup.sh installs it) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
set_=${1:-all}
out=out/experiments
results=${RESULTS:-$out/results.jsonl}
steps=${STEPS:-200}
eff_steps=${EFF_STEPS:-60}
seeds=${SEEDS:-1}
lowrank=${LOWRANK:-build/lowrank}
model=${MODEL:-models/base}
lr_full=${LR_FULL:-1e-3}
lr_lora=${LR_LORA:-3e-3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
common=(--data-dir "$out/data" --results "$results" --batch "${BATCH:-8}" --seq-len "${SEQ_LEN:-128}"
        --device "${DEVICE:-cpu}" --lowrank "$lowrank" --model "$model" --work-dir "$out/runs")

if [ ! -s "$out/data/train.jsonl" ]; then
  mkdir -p "$out/data"
  bible -l10000 "Gen1:1-Rev22:21" > "$out/data/kjv.txt"
  python3 scripts/experiments/kjv_data.py "$out/data/kjv.txt" "$out/data"
fi
if [ ! -s "$out/base_eval.json" ]; then  # the base model before any fine-tuning
  "$lowrank" eval --model "$model" --data "$out/data/eval.jsonl" --seq-len "${SEQ_LEN:-128}" --json --quiet \
    --device "${DEVICE:-cpu}" > "$out/base_eval.json"
fi
echo "base model, held-out books: $(cat "$out/base_eval.json")" >&2

run() { echo "== $* ($(date -u +%H:%M:%S))" >&2; python3 scripts/experiments/run_one.py "${common[@]}" --skip-done --claim "$@"; }
lora() { run --method lora --lr "$lr_lora" "$@"; }

jobs=${JOBS:-1}
[ "${KEEP_CLAIMS:-0}" = 1 ] || rm -rf "$out"/runs/*.claim  # KEEP_CLAIMS=1: add workers to a set already running
quality() {
  for seed in $seeds; do
    s=(--seed "$seed" --steps "$steps")
    run --method full --lr "$lr_full" "${s[@]}"
    # In order of what each question needs first (a set cut short still answers each a little).
    lora --rank 8 --targets q_proj,v_proj "${s[@]}"
    lora --rank 8 --targets all-linear "${s[@]}"
    lora --rank 1 --targets q_proj,v_proj "${s[@]}"
    lora --rank 64 --targets q_proj,v_proj "${s[@]}"
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj "${s[@]}"
    lora --rank 8 --alpha 32 --targets q_proj,v_proj "${s[@]}"
    lora --rank 4 --targets q_proj,v_proj "${s[@]}"
    lora --rank 16 --targets q_proj,v_proj "${s[@]}"
    lora --rank 8 --targets v_proj "${s[@]}"
    lora --rank 8 --targets q_proj "${s[@]}"
    lora --rank 8 --alpha 8 --targets q_proj,v_proj "${s[@]}"
    run --method dora --lr "$lr_lora" --rank 8 --targets q_proj,v_proj "${s[@]}"
  done
}
if [ "$set_" = quality ] || [ "$set_" = all ]; then
  if [ "$jobs" -gt 1 ]; then
    export OMP_NUM_THREADS=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
    for ((j = 0; j < jobs; j++)); do quality & sleep 2; done
    wait
    unset OMP_NUM_THREADS
  else
    quality
  fi
  [ "${KEEP_CLAIMS:-0}" = 1 ] || rm -rf "$out"/runs/*.claim
fi
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
if [ "$set_" = efficiency ] || [ "$set_" = all ]; then
  common+=(--results "${EFF_RESULTS:-$out/efficiency.jsonl}")  # the later --results wins
  for round in $(seq 1 "${EFF_ROUNDS:-2}"); do
    s=(--seed 1 --steps "$eff_steps" --tag "eff$round" --no-eval)
    run --method full --lr "$lr_full" "${s[@]}"
    for r in 4 16; do
      for t in q_proj,v_proj all-linear; do lora --rank "$r" --targets "$t" "${s[@]}"; done
    done
  done
fi
