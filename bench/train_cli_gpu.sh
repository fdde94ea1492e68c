#!/usr/bin/env bash
# Run ON the GPU box (repository root, carrying .devrun/cuda-build from scripts/device-pack.sh):
# the user's path at a benchmark shape. transformers writes a random-init model folder shaped like
# bench_train_gpu's (Qwen2.5-0.5B, Llama-3.2-1B or Llama-3-8B), then `lowrank train` trains LoRA
# r=16 on random token ids with the bench's batch per GPU, once per device list (one GPU:
# --device; several: --devices, data parallel, the global batch growing with the GPUs); tokens/s
# (mean of the steps after the first 3, from metrics.jsonl) goes out as one RESULT line per run.
#   bench/train_cli_gpu.sh [qwen0.5b|llama1b|llama8b] [all-linear|q_proj,v_proj] [STEPS (default 12)]
#                          [DEVICE LISTS (default "cuda:0"; e.g. "cuda:0 cuda:0,cuda:1")]
# TRAIN_ARGS (environment): more `lowrank train` flags (e.g. "--full"), recorded in the rows.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-qwen0.5b} targets=${2:-all-linear} steps=${3:-12} device_lists=${4:-cuda:0}
bin=.devrun/cuda-build/bin
. scripts/device-env.sh .devrun/cuda-build
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
python3 - "$shape" "$work" <<'PY'
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
shape, work = sys.argv[1], sys.argv[2]
if shape == "qwen0.5b":
    cfg = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                      intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
    cls = Qwen2ForCausalLM
elif shape == "llama1b":
    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=4096)
    cls = LlamaForCausalLM
else:
    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=8192)
    cls = LlamaForCausalLM
torch.manual_seed(0)
with torch.device("cuda"):
    model = cls(cfg).to(torch.bfloat16)
model.save_pretrained(work + "/model")
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
g = torch.Generator().manual_seed(1)
with open(work + "/data.jsonl", "w") as f:
    seq = 2048 if shape == "llama8b" else 1024
    for _ in range(256):
        f.write(json.dumps({"input_ids": torch.randint(0, cfg.vocab_size, (seq,), generator=g).tolist()}) + "\n")
PY
batch=8 seq=1024
[ "$shape" = llama8b ] && batch=4 seq=2048
for devices in $device_lists; do
  gpus=$(echo "$devices" | tr ',' '\n' | wc -l)
  if [ "$gpus" = 1 ]; then flag=(--device "$devices"); else flag=(--devices "$devices"); fi
  rm -rf "$work/out"
  "$bin/lowrank" train --model "$work/model" --data "$work/data.jsonl" --out "$work/out" "${flag[@]}" \
    --steps "$steps" --batch-size $((batch * gpus)) --seq-len "$seq" --targets "$targets" --rank 16 --alpha 32 \
    --dropout 0 --warmup 0 ${TRAIN_ARGS:-}
  python3 - "$work/out/metrics.jsonl" "$shape" "$targets" "$gpus" "${TRAIN_ARGS:-}" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_second"' in l]
late = rows[3:] or rows
tps = sum(r["tokens"] for r in late) / sum(r["tokens"] / r["tokens_per_second"] for r in late)
print("RESULT " + json.dumps({"engine": "lowrank-cli", "model": sys.argv[2], "targets": sys.argv[3],
                              "gpus": int(sys.argv[4]), "split": False, "tokens_per_s": tps,
                              "peak_gib": rows[-1].get("gpu_peak_reserved_gib"), "steps": len(rows),
                              "args": sys.argv[5], "step_graph": os.environ.get("LOWRANK_STEP_GRAPH", "1"),
                              "overlap": os.environ.get("LOWRANK_DIST_OVERLAP", "1")}))
PY
done
rm -rf "$work"
