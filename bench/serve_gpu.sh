#!/usr/bin/env bash
# Run ON the GPU box (repository root, carrying .devrun/cuda-build from scripts/device-pack.sh and
# tests/data/tokenizers): the serving benchmark of issue 13. For each shape, bench/
# peft_mixed_generate.py writes a random model with 64 random r=16 all-linear adapters and times
# transformers + PEFT mixed-adapter generate; then `lowrank serve --device cuda` serves the same
# folders and bench_serve_load drives it with C concurrent streaming clients over K distinct
# adapters. Raw rows: $OUT/serve-gpu-YYYY-MM-DD.jsonl (copy to bench/results/).
#   bench/serve_gpu.sh [--only qwen0.5b,llama8b] [--pairs 1x1,16x1,16x8,64x1,64x8,64x64] [--new 64] [--no-peft]
#                      [--peft-seconds S] [--merged N] [--repeat R] [--reuse]
# --peft-seconds: stop the PEFT timings after S seconds (the pairs it finished keep their rows; the
# model and adapters are written first), so that lowrank's rows still fit in one device call.
# --merged N: the server keeps N merged copies of the model (`serve --merged-adapters N`: a batch
# whose every request uses one adapter runs with it merged into the weights); rows say "merged": N.
# --repeat R: each pair's measured run R times in the same server (one row each), to see the spread.
# --reuse: keep the model and adapters a previous run wrote under $TMPDIR (no PEFT rows then): an
# A/B of server settings (LOWRANK_* variables) in one device call without writing them again.
set -uo pipefail
cd "$(dirname "$0")/.."
only="qwen0.5b" pairs="1x1,16x1,16x8,64x1,64x8,64x64" new=64 peft="" peft_seconds=0 merged=0 repeat=1 reuse=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    --no-peft) peft=--no-peft; shift ;;
    --peft-seconds) peft_seconds=$2; shift 2 ;;
    --merged) merged=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    *) echo "usage: $0 [--only SHAPES] [--pairs CxK,...] [--new N] [--no-peft] [--peft-seconds S] [--merged N] [--repeat R] [--reuse]" >&2; exit 2 ;;
  esac
done
bin=.devrun/cuda-build/bin
. scripts/device-env.sh .devrun/cuda-build
out=${OUT:-/tmp}/serve-gpu-$(date -u +%Y-%m-%d).jsonl
work=${TMPDIR:-/tmp}/lowrank-serve-bench
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# The server's counters now, as "name=value ..." (one word each): decode rounds and the sequences
# they stepped, prefill rounds, the rounds' and the queue's seconds, the allocator's cudaMalloc calls.
counters() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    /^lowrank_decode_rounds_total /{printf "rounds=%s ", $2}
    /^lowrank_decode_round_sequences_total /{printf "sequences=%s ", $2}
    /^lowrank_prefill_rounds_total /{printf "prefill_rounds=%s ", $2}
    /^lowrank_round_seconds_total\{kind="prefill"\} /{printf "prefill_s=%s ", $2}
    /^lowrank_round_seconds_total\{kind="decode"\} /{printf "decode_s=%s ", $2}
    /^lowrank_queue_seconds_total /{printf "queue_s=%s ", $2}
    /^lowrank_device_allocations_total /{printf "device_mallocs=%s ", $2}
    END{print ""}'
}
for shape in ${only//,/ }; do
  tok=tests/data/tokenizers/qwen3; [ "$shape" = llama8b ] && tok=tests/data/tokenizers/llama3
  max_adapters=1
  for p in ${pairs//,/ }; do [ "${p#*x}" -gt "$max_adapters" ] && max_adapters=${p#*x}; done
  if [ "$reuse" = 1 ] && [ "$(cat "$work/shape" 2>/dev/null)" = "$shape" ] && [ -d "$work/adapters/a$((max_adapters - 1))" ]; then
    echo "== reusing $work (model and $max_adapters adapters)" >&2
  else
    rm -rf "$work" && mkdir -p "$work"
    timeout "$peft_seconds" python3 bench/peft_mixed_generate.py --shape "$shape" --out "$work" --tokenizer "$tok" --adapters "$max_adapters" \
      --pairs "$pairs" --new "$new" $peft 2>&1 | tee "$work/peft.log" | grep '^RESULT ' | sed 's/^RESULT //' >> "$out"
    grep -v '^RESULT ' "$work/peft.log" | tail -3 >&2
    echo "$shape" > "$work/shape"
  fi
  adapter_flags=()
  for ((i = 0; i < max_adapters; i++)); do adapter_flags+=(--adapter "a$i=$work/adapters/a$i"); done
  port=$((8200 + RANDOM % 500))
  "$bin/lowrank" serve --model "$work/model" "${adapter_flags[@]}" --device cuda --port "$port" --max-batch 64 \
    --merged-adapters "$merged" 2> "$work/serve.log" &
  server=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || break
    sleep 0.5
  done
  for p in ${pairs//,/ }; do
    clients=${p%x*} distinct=${p#*x}
    models=$(seq -s, -f 'a%g' 0 $((distinct - 1)))
    requests=$((clients * 2)); [ "$requests" -lt 4 ] && requests=4
    # Warm-up at this concurrency (cuBLASLt choices, decode graphs), then the measured run. With
    # merged copies, long enough for a one-adapter batch to earn its copy (the server makes one
    # after 16 decode steps alone), so that the measured run does not pay for its making.
    warm_tokens=8; [ "$merged" -gt 0 ] && warm_tokens=32
    "$bin/bench_serve_load" --port "$port" --clients "$clients" --requests "$clients" --models "$models" \
      --prompt-tokens 128 --max-tokens "$warm_tokens" >/dev/null
    for ((rep = 0; rep < repeat; rep++)); do
      before=$(counters "$port")
      row=$("$bin/bench_serve_load" --port "$port" --clients "$clients" --requests "$requests" --models "$models" \
        --prompt-tokens 128 --max-tokens "$new")
      # What the server did during the run: its decode rounds and their mean batch (how well
      # requests joined), prefill rounds, seconds in prefill and decode rounds and in the queue
      # (summed over sequences), cudaMalloc calls.
      row=$(python3 bench/serve_counters.py "$row" "$before" "$(counters "$port")" \
        "bench=serve_gpu engine=lowrank shape=$shape adapters=$distinct merged=$merged")
      echo "$row" >> "$out"
      echo "$shape ${clients}x$distinct: $row" >&2
    done
  done
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '^lowrank_' | head -20 >&2
  kill -TERM $server; wait $server
  tail -5 "$work/serve.log" >&2
done
echo "rows: $out" >&2
