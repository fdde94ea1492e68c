#!/usr/bin/env bash
# Run ON the GPU box (repository root, carrying .devrun/cuda-build from scripts/device-pack.sh):
# lowrank vs PEFT LoRA training, one configuration per process (so every peak-memory number is
# that configuration's own: peak reserved, torch.cuda.max_memory_reserved's definition), then a
# markdown table. Raw rows: $OUT/gpu-train-YYYY-MM-DD.jsonl (copy to bench/results/); lowrank's
# per-category step profiles (LOWRANK_PROFILE=1): $OUT/profiles.txt.
#   bench/gpu_benchmark.sh [--only qwen0.5b,llama1b,llama8b] [--targets all-linear|q_proj,v_proj]
#                          [--checkpointing 0|1] [--steps 8] [--no-compile] [--no-eager] [--no-peft]
# (--no-eager: PEFT + torch.compile only, the binding comparison; saves a third of a call.)
# The 8B shape runs with and without gradient checkpointing (--checkpointing picks one), PEFT
# + torch.compile included in both.
set -uo pipefail
cd "$(dirname "$0")/.."
only="qwen0.5b,llama1b,llama8b" steps=8 compile=1 eager=1 peft=1 targets_list="all-linear q_proj,v_proj" ckpt_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --no-compile) compile=0; shift ;;
    --no-eager) eager=0; shift ;;
    --no-peft) peft=0; shift ;;
    --targets) targets_list=$2; shift 2 ;;
    --checkpointing) ckpt_only=$2; shift 2 ;;
    *) echo "usage: $0 [--only SHAPES] [--targets T] [--checkpointing 0|1] [--steps N] [--no-compile] [--no-eager] [--no-peft]" >&2
       exit 2 ;;
  esac
done
bin=.devrun/cuda-build/bin
. scripts/device-env.sh .devrun/cuda-build
out=${OUT:-/tmp}/gpu-train-$(date -u +%Y-%m-%d).jsonl
profiles=${OUT:-/tmp}/profiles.txt
touch "$out" "$profiles"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
for shape in ${only//,/ }; do
  for targets in $targets_list; do
    ckpts="0"; [ "$shape" = llama8b ] && ckpts="0 1"
    [ -n "$ckpt_only" ] && ckpts=$ckpt_only
    for ck in $ckpts; do
      LOWRANK_PROFILE=1 "$bin/bench_train_gpu" --only "$shape" --targets "$targets" --checkpointing "$ck" \
        --steps "$steps" --warmup 3 2>>"$profiles" | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
      modes=""
      [ "$eager" = 1 ] && modes="--no-compile"
      [ "$compile" = 1 ] && modes="$modes --compile-only"
      [ "$peft" = 1 ] || modes=""
      for mode in $modes; do
        python3 bench/peft_baseline.py --only "$shape" --targets "$targets" --checkpointing "$ck" $mode \
          --steps "$steps" --warmup 3 2>/dev/null | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
      done
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r.get("model"), r.get("targets"), bool(r.get("checkpointing")))
    mode = "lowrank" if r.get("engine") == "lowrank" else ("compile" if r.get("compile") else "eager")
    rows.setdefault(key, {})[mode] = r
def cell(r):
    if not r: return "—"
    if "error" in r: return "error"
    return f"{r['tokens_per_s']/1e3:.1f}k ({r['peak_gib']:.1f} GiB, {100*r['mfu']:.0f}%)"
print("| shape | targets | checkpointing | lowrank | PEFT eager | PEFT compile | vs eager | vs compile |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (m, t, ck), v in rows.items():
    lr, e, c = v.get("lowrank"), v.get("eager"), v.get("compile")
    ratio = lambda a, b: f"{a['tokens_per_s']/b['tokens_per_s']:.2f}×" if a and b and "error" not in a and "error" not in b else "—"
    print(f"| {m} | {t} | {'yes' if ck else 'no'} | {cell(lr)} | {cell(e)} | {cell(c)} | {ratio(lr, e)} | {ratio(lr, c)} |")
PY
