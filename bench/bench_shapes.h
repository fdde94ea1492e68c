#pragma once
// The model shapes the GPU benchmarks use (random weights, model::random_model): the published
// configs of Qwen2.5-0.5B, Llama-3.2-1B, Llama-3-8B and Llama-3-70B, the experiments' two bases
// (issue 15: the bundled models/base, and the ~120M one of scripts/base-model/pretrain_lowrank.sh),
// plus a tiny smoke-test shape.
#include <cstdint>
#include <string>

#include "lowrank/model/random_model.h"

namespace lowrank::bench {

struct BenchShape {
  const char* name;
  int64_t hidden, layers, heads, kv, ffn, vocab;
  bool tie, qkv_bias;
  int64_t batch, seq;  // the training benchmark's batch per step (as PEFT's baseline)
};

inline constexpr BenchShape kShapes[] = {
    {"tiny", 64, 4, 4, 2, 128, 512, false, false, 2, 64},
    {"qwen0.5b", 896, 24, 14, 2, 4864, 151936, true, true, 8, 1024},
    {"llama1b", 2048, 16, 32, 8, 8192, 128256, true, false, 8, 1024},
    {"llama8b", 4096, 32, 32, 8, 14336, 128256, false, false, 4, 2048},
    {"llama70b", 8192, 80, 64, 8, 28672, 128256, false, false, 4, 2048},
    {"base7m", 256, 6, 4, 4, 704, 8192, true, false, 16, 512},
    {"base120m", 768, 16, 12, 12, 2048, 8192, true, false, 16, 512},
};

// The shape named `name`, or null.
inline const BenchShape* find_shape(const std::string& name) {
  for (const BenchShape& s : kShapes)
    if (name == s.name) return &s;
  return nullptr;
}

// Its model description (Qwen2's q/k/v biases where the shape has them).
inline model::ModelConfig shape_config(const BenchShape& s, int64_t context) {
  model::ModelConfig c = model::llama_config(s.hidden, s.layers, s.heads, s.kv, s.ffn, s.vocab, context, s.tie);
  if (s.qkv_bias) {
    c.arch = model::Arch::Qwen2;
    c.attention_bias = true;
  }
  return c;
}

}  // namespace lowrank::bench
