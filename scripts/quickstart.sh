#!/usr/bin/env bash
# The README's main command: LoRA, end to end, offline, on CPU, in minutes.
#
#   scripts/quickstart.sh
#
# Installs what it needs (Debian packages), builds lowrank, then teaches the bundled base model
# (models/base: a 7M-parameter Llama pretrained on the Brown corpus, Linux man pages and the
# Python docs; docs/base-model.md) a domain it never saw, the King James Bible:
#   eval loss and sample generations before, a LoRA fine-tune with the progress bar, eval loss
#   and generations after, the trainable-parameter count, a loss chart, and a merged model.
# Everything it makes goes to out/quickstart/ (adapter/, merged/, loss.svg, summary.json, and the
# base model and adapter as llama.cpp's GGUF files).
# docs/quickstart.md shows a real run. Knobs (environment): STEPS, BATCH, SEQ_LEN, LR, RANK,
# THREADS (OpenMP threads; default all cores), QUICKSTART_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
out=${QUICKSTART_OUT:-out/quickstart}
model=${BASE_MODEL:-models/base}
steps=${STEPS:-300}
batch=${BATCH:-8}
seq_len=${SEQ_LEN:-160}
lr=${LR:-3e-3}
rank=${RANK:-16}
prompts=("And the LORD said unto Moses," "In the beginning" "Blessed are they that")

section() { printf '\n\033[1m== %s\033[0m  (%ss)\n' "$*" "$(( $(date +%s) - t_start ))" >&2; }

section "1/8 setup: Debian packages (scripts/setup.sh)"
scripts/setup.sh

section "2/8 build: lowrank for this CPU (build-quickstart/)"
if [ ! -f build-quickstart/CMakeCache.txt ]; then
  cmake -S . -B build-quickstart -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWRANK_NATIVE=ON \
    -DLOWRANK_CUDA=OFF -DLOWRANK_TESTS=OFF -DLOWRANK_BENCH=OFF >/dev/null
fi
echo "building lowrank (about 2 minutes on 2 cores; log: build-quickstart/build.log)"
if ! cmake --build build-quickstart -j"$(nproc)" --target lowrank_cli > build-quickstart/build.log 2>&1; then
  tail -n 40 build-quickstart/build.log >&2
  echo "error: the build failed (build-quickstart/build.log)" >&2
  exit 1
fi
lowrank=build-quickstart/lowrank
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS
# OMP_WAIT_POLICY: `lowrank` picks it (PASSIVE when its OpenBLAS has threads of its own; see
# docs/quickstart.md, Notes); a value set here is kept.

section "3/8 data: the King James Bible (Debian bible-kjv), a domain the base model never saw"
mkdir -p "$out/data"
if [ ! -s "$out/data/train.jsonl" ]; then
  bible -l10000 "Gen1:1-Rev22:21" > "$out/data/kjv.txt"
  python3 scripts/quickstart/bible_data.py "$out/data/kjv.txt" "$out/data"
fi
head -c 300 "$out/data/train.jsonl"; echo " ..."

section "4/8 the base model: $model"
"$lowrank" inspect "$model"

have_generate=0
"$lowrank" generate --help >/dev/null 2>&1 && have_generate=1
samples() {  # samples TITLE [--adapter DIR]
  local title=$1
  shift
  echo "-- $title"
  if [ "$have_generate" = 0 ]; then
    echo "   (this build has no 'lowrank generate' yet)"
    return
  fi
  for p in "${prompts[@]}"; do
    text=$("$lowrank" generate --model "$model" "$@" --prompt "$p" --max-new-tokens 40 \
             --temperature 0.7 --top-k 40 --seed 1 2>/dev/null | tr '\n' ' ')
    printf '   %s\033[1m%s\033[0m\n' "$p" "$text"
  done
}

section "5/8 samples from the base model, before fine-tuning"
samples "base model (sampling, temperature 0.7, seed 1):"

section "6/8 LoRA fine-tune on CPU: rank $rank, all linear layers, $steps steps of $batch passages"
rm -rf "$out/adapter"
t_train=$(date +%s)
"$lowrank" train --model "$model" --data "$out/data/train.jsonl" --eval-data "$out/data/eval.jsonl" \
  --out "$out/adapter" --rank "$rank" --alpha $((2 * rank)) --targets all-linear --dropout 0.05 \
  --lr "$lr" --warmup 10 --schedule cosine --steps "$steps" --batch-size "$batch" --seq-len "$seq_len" \
  --seed 1
train_s=$(( $(date +%s) - t_train ))
"$lowrank" plot "$out/adapter/metrics.jsonl" -o "$out/loss.svg" --title "quickstart: LoRA on the King James Bible"

section "7/8 samples with the adapter, after fine-tuning"
samples "base model + adapter (same prompts, same seed):" --adapter "$out/adapter"

section "8/8 merge the adapter into the base weights: $out/merged"
rm -rf "$out/merged"
"$lowrank" merge --model "$model" --adapter "$out/adapter" --out "$out/merged"
# The merged model scores the eval passages exactly as base + adapter does.
"$lowrank" tokenize --tokenizer "$model" --input "$out/data/eval.jsonl" --add-special-tokens |
  python3 -c 'import json, sys
eos = json.load(open(sys.argv[1]))["eos_token_id"]
for l in sys.stdin:
    print(json.dumps({"input_ids": json.loads(l)["ids"] + [eos]}))' "$model/config.json" > "$out/data/eval_ids.jsonl"
loss_adapter=$("$lowrank" eval --model "$model" --adapter "$out/adapter" --data "$out/data/eval_ids.jsonl" --json)
loss_merged=$("$lowrank" eval --model "$out/merged" --data "$out/data/eval_ids.jsonl" --json)
echo "eval, base + adapter: $loss_adapter"
echo "eval, merged model:   $loss_merged"
# The same for llama.cpp (llama-cli -m base.gguf --lora kjv-lora.gguf; docs/gguf.md).
"$lowrank" gguf --model "$model" --out "$out/base.gguf"
"$lowrank" gguf --model "$model" --adapter "$out/adapter" --out "$out/kjv-lora.gguf"

section "summary"
status=0
python3 scripts/quickstart/summary.py "$model" "$out/adapter" --json "$out/summary.json" || status=$?
echo "fine-tuning time: ${train_s}s on $(nproc) CPU cores; whole quickstart: $(( $(date +%s) - t_start ))s"
echo "outputs: $out/adapter/ (PEFT adapter + metrics.jsonl), $out/merged/ (HF model folder), $out/loss.svg,"
echo "         $out/base.gguf + $out/kjv-lora.gguf (llama.cpp: llama-cli -m base.gguf --lora kjv-lora.gguf)"
exit "$status"
