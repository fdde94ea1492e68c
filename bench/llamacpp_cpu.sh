#!/usr/bin/env bash
# CPU inference next to llama.cpp on the same weights: prefill (512 tokens) and decode (64 tokens)
# throughput of a 91M-parameter Llama-shaped random model with the bundled tokenizer — lowrank
# (f32, bench_cpu_infer) and llama.cpp's llama-bench on the GGUF files `lowrank gguf` writes from
# that folder (f32, bf16, q8_0) — with the same threads, one after the other. Numbers, no pass/fail.
#
#   LLAMA_BENCH=/path/to/llama-bench bench/llamacpp_cpu.sh [THREADS] [REPS]
#
# llama-bench: build llama.cpp (cmake, no other dependency). Rows go to
# bench/results/cpu-llamacpp-<date>.jsonl (engine, format, test, threads, tokens_per_s).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
reps=${2:-3}
: "${LLAMA_BENCH:?set LLAMA_BENCH to the llama-bench binary of llama.cpp}"
lowrank=build/lowrank
bench=build/bench/bench_cpu_infer
[ -x "$lowrank" ] && [ -x "$bench" ] || { echo "error: build lowrank and bench_cpu_infer first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rows=bench/results/cpu-llamacpp-$(date -u +%F).jsonl
mkdir -p bench/results

"$bench" --save "$work/model" --vocab 8192 >&2
cp models/base/tokenizer.json models/base/tokenizer_config.json "$work/model/"
for t in f32 bf16 q8_0; do "$lowrank" gguf --model "$work/model" --outtype "$t" --out "$work/model.$t.gguf"; done

now=$(date -u +%FT%TZ)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "== lowrank (f32), $threads threads" >&2
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$bench" --model "$work/model" --seq 512 --decode 64 --reps "$reps" |
  tee "$work/lowrank.txt" >&2
awk -v now="$now" -v th="$threads" -v cpu="$cpu" '
  /^base model/ { printf "{\"date\":\"%s\",\"cpu\":\"%s\",\"engine\":\"lowrank\",\"format\":\"f32\",\"adapter\":\"none\",\"test\":\"pp512\",\"threads\":%d,\"tokens_per_s\":%s}\n{\"date\":\"%s\",\"cpu\":\"%s\",\"engine\":\"lowrank\",\"format\":\"f32\",\"adapter\":\"none\",\"test\":\"tg64\",\"threads\":%d,\"tokens_per_s\":%s}\n", now, cpu, th, $(NF-1), now, cpu, th, $NF }
  /^LoRA r=.*unmerged/ { printf "{\"date\":\"%s\",\"cpu\":\"%s\",\"engine\":\"lowrank\",\"format\":\"f32\",\"adapter\":\"r16 all-linear unmerged\",\"test\":\"pp512\",\"threads\":%d,\"tokens_per_s\":%s}\n{\"date\":\"%s\",\"cpu\":\"%s\",\"engine\":\"lowrank\",\"format\":\"f32\",\"adapter\":\"r16 all-linear unmerged\",\"test\":\"tg64\",\"threads\":%d,\"tokens_per_s\":%s}\n", now, cpu, th, $(NF-1), now, cpu, th, $NF }
' "$work/lowrank.txt" >> "$rows"

echo "== llama.cpp ($LLAMA_BENCH), $threads threads" >&2
for t in f32 bf16 q8_0; do
  "$LLAMA_BENCH" -m "$work/model.$t.gguf" -p 512 -n 64 -t "$threads" -r "$reps" -o jsonl > "$work/llama.$t.jsonl"
  python3 - "$work/llama.$t.jsonl" "$t" "$now" "$threads" "$cpu" >> "$rows" <<'PY'
import json, sys
path, fmt, now, threads, cpu = sys.argv[1:6]
for line in open(path):
    r = json.loads(line)
    test = "pp%d" % r["n_prompt"] if r["n_prompt"] else "tg%d" % r["n_gen"]
    print(json.dumps({"date": now, "cpu": cpu, "engine": "llama.cpp " + r.get("build_commit", ""), "format": fmt,
                      "adapter": "none", "test": test, "threads": int(threads), "tokens_per_s": round(r["avg_ts"], 2)}))
    print("%-10s %-6s %8.1f tok/s" % (fmt, test, r["avg_ts"]), file=sys.stderr)
PY
done
echo "rows appended to $rows" >&2
