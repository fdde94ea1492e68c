#!/usr/bin/env bash
# Writes adapters and merged/fully-trained model folders with lowrank, plus lowrank's own eval
# losses for them, into OUT (default .devrun/interop). tests/reference/check_peft_interop.py then
# loads each one with PEFT / transformers on the GPU box and compares the losses.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.devrun/interop}
bin=build/lowrank
fx=tests/fixtures/models
rm -rf "$out" && mkdir -p "$out"
train() {  # name base extra-args...
  local name=$1 base=$2; shift 2
  $bin train --model $fx/$base --data $fx/$base/eval.jsonl --out "$out/$name" --steps 8 \
    --batch-size 2 --quiet "$@" 2>>"$out/log.txt"
  rm -rf "$out/$name"/checkpoint-* "$out/$name/metrics.jsonl"
}
train llama_all_linear llama --lr 1e-2 --targets all-linear --rank 4 --alpha 8
train llama_rslora_qv llama --lr 1e-2 --targets q_proj,v_proj --rank 8 --alpha 16 --rslora
train qwen2_bias_all qwen2 --lr 1e-2 --targets q_proj,v_proj --rank 4 --bias all
train gpt2_conv1d gpt2 --lr 1e-2 --targets c_attn,c_proj,c_fc --rank 4
train qwen3_all_linear qwen3 --lr 1e-2 --targets all-linear --rank 4
train llama_full llama --full --lr 1e-3
# LoRA variants (issue 11): DoRA, embedding/lm_head LoRA (a tied embedding too), PiSSA/OLoRA saved
# converted for the original base.
train llama_dora llama --lr 1e-2 --targets all-linear --rank 4 --alpha 8 --use-dora
train llama_embed_lm_head llama --lr 1e-2 --targets embed_tokens,lm_head,q_proj,v_proj --rank 4
train qwen2_tied_embed qwen2 --lr 1e-2 --targets embed_tokens,q_proj --rank 4
# all-linear with the output layer (its names listed in adapter_config.json), on a tied embedding.
train qwen2_all_linear_lm_head qwen2 --lr 1e-2 --targets all-linear,lm_head --rank 4
# Some blocks only (layers_to_transform; on GPT-2 with layers_pattern "h" and all-linear's names).
train llama_layers_qv llama --lr 1e-2 --targets q_proj,v_proj --rank 4 --layers-to-transform 1
train gpt2_all_linear_layers gpt2 --lr 1e-2 --targets all-linear --rank 4 --layers-to-transform 0 --layers-pattern h
train llama_pissa llama --lr 1e-2 --targets q_proj,v_proj,down_proj --rank 4 --init pissa
train llama_olora llama --lr 1e-2 --targets q_proj,v_proj,down_proj --rank 4 --init olora
# Model families (issue 12): Gemma 2 (soft-capping), Gemma 3, Phi-3 (fused qkv_proj / gate_up_proj).
train gemma2_all_linear gemma2 --lr 1e-2 --targets all-linear --rank 4
train gemma3_all_linear gemma3 --lr 1e-2 --targets all-linear --rank 4
train phi3_all_linear phi3 --lr 1e-2 --targets all-linear --rank 4
$bin merge --model $fx/llama --adapter "$out/llama_all_linear" --out "$out/merged_llama_f32" --dtype f32 2>>"$out/log.txt"
$bin merge --model $fx/phi3 --adapter "$out/phi3_all_linear" --out "$out/merged_phi3_f32" --dtype f32 2>>"$out/log.txt"
$bin merge --model $fx/gpt2 --adapter "$out/gpt2_conv1d" --out "$out/merged_gpt2_bf16" --dtype bf16 2>>"$out/log.txt"
$bin merge --model $fx/qwen2 --adapter "$out/qwen2_bias_all" --out "$out/merged_qwen2_f32" 2>>"$out/log.txt"
$bin merge --model $fx/llama --adapter "$out/llama_dora" --out "$out/merged_llama_dora_f32" --dtype f32 2>>"$out/log.txt"
$bin merge --model $fx/llama --adapter "$out/llama_embed_lm_head" --out "$out/merged_llama_embed_f32" --dtype f32 2>>"$out/log.txt"
{
  echo "{"
  sep=""
  for spec in llama_all_linear:llama qwen2_bias_all:qwen2 gpt2_conv1d:gpt2 qwen3_all_linear:qwen3 llama_rslora_qv:llama \
              llama_dora:llama llama_embed_lm_head:llama qwen2_tied_embed:qwen2 qwen2_all_linear_lm_head:qwen2 \
              llama_layers_qv:llama gpt2_all_linear_layers:gpt2 llama_pissa:llama llama_olora:llama \
              gemma2_all_linear:gemma2 gemma3_all_linear:gemma3 phi3_all_linear:phi3; do
    name=${spec%%:*} base=${spec##*:}
    loss=$($bin eval --model $fx/$base --adapter "$out/$name" --data $fx/$base/eval.jsonl --json)
    printf '%s "%s": {"kind": "adapter", "base": "%s", "ours": %s}' "$sep" "$name" "$base" "$loss"; sep=","
  done
  for spec in merged_llama_f32:llama merged_gpt2_bf16:gpt2 merged_qwen2_f32:qwen2 llama_full:llama \
              merged_llama_dora_f32:llama merged_llama_embed_f32:llama merged_phi3_f32:phi3; do
    name=${spec%%:*} base=${spec##*:}
    loss=$($bin eval --model "$out/$name" --data $fx/$base/eval.jsonl --json)
    printf '%s "%s": {"kind": "model", "base": "%s", "ours": %s}' "$sep" "$name" "$base" "$loss"
  done
  echo "}"
} > "$out/ours.json"
echo "interop outputs in $out"
