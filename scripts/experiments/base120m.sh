#!/usr/bin/env bash
# Issue 15's sets on the ~120M base in one GPU call: the base cannot come back from the box
# (240 MB), so the call pretrains it first (scripts/base-model/pretrain_lowrank.sh gpu, 4 epochs,
# ~1.5 minutes on an H200) and then runs each TASK:SET with run.sh on it.
#
#   scripts/experiments/base120m.sh TASK:SET [TASK:SET ...]      e.g.  kjv:seeds pos:seeds
#
# Carry to the box: .devrun/cuda-build, out/base120m/{train,val}.txt.gz (pretrain_lowrank.sh
# prepare, here) and out/experiments/data/TASK for each task (run.sh TASK prepare, here).
# Rows go to $DEST (default: $OUT when the device tool sets it, else out/experiments), one file per
# task and set: TASK-SET-base120m.jsonl, with the pretraining's summary (base120m-summary.json)
# and every run's metrics.jsonl (runs-metrics.tgz: the loss curves, report.py --runs-dir).
# Defaults on this base: JOBS=3 (runs share the GPU: quality only, not speed), LR_FULL=3e-4,
# SEED_LIST="1 2 3" for the seeds set (no seed-1 quality rows exist for a fresh base). A set that
# runs out of time (BUDGET seconds for the whole call, default 560) leaves the rows it finished.
# DRY=1: everything on the CPU with the dry-run base and EVAL_LIMIT=20 (checks the plumbing here).
set -uo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
dest=${DEST:-${OUT:-out/experiments}}
mkdir -p "$dest"
t0=$(date +%s)
budget=${BUDGET:-560}
if [ "${DRY:-0}" = 1 ]; then
  OUT=out/base120m TRAIN_SECONDS=${TRAIN_SECONDS:-10} scripts/base-model/pretrain_lowrank.sh dry-run > "$dest/pretrain.log" 2>&1 || { tail -5 "$dest/pretrain.log"; exit 2; }
  model=out/base120m-dry/model device=cpu
  export EVAL_LIMIT=${EVAL_LIMIT:-20} STEPS=${STEPS:-4}
  cp out/base120m-dry/summary.json "$dest/base120m-summary.json"
else
  OUT=out/base120m EPOCHS=${EPOCHS:-4} scripts/base-model/pretrain_lowrank.sh gpu > "$dest/pretrain.log" 2>&1 || { tail -5 "$dest/pretrain.log"; exit 2; }
  model=out/base120m/model device=cuda
  cp out/base120m/summary.json "$dest/base120m-summary.json"
fi
echo "pretrained in $(( $(date +%s) - t0 )) s: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("validation loss", s["val_loss"])' "$dest/base120m-summary.json")"
for pair in "$@"; do
  task=${pair%%:*} set_=${pair#*:}
  left=$(( budget - ($(date +%s) - t0) ))
  [ "$left" -gt 20 ] || { echo "$pair: no time left"; continue; }
  rows=$dest/$task-$set_-base120m.jsonl
  MODEL=$model DEVICE=$device JOBS=${JOBS:-3} LR_FULL=${LR_FULL:-3e-4} SEED_LIST=${SEED_LIST:-1 2 3} RESULTS=$rows \
    timeout "$left" scripts/experiments/run.sh "$task" "$set_" > "$dest/$task-$set_.log" 2>&1
  echo "$pair: rc $?, $(wc -l < "$rows" 2>/dev/null || echo 0) rows after $(( $(date +%s) - t0 )) s"
done
# The runs' loss curves (metrics.jsonl), for report.py --curves / --rank-curves here.
tar czf "$dest/runs-metrics.tgz" out/experiments/runs-*/*/metrics.jsonl 2>/dev/null || true
