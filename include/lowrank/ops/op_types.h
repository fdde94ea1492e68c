#pragma once
// Small value types shared by the op declarations (ops.h) and the backends that implement them.
#include <cmath>
#include <cstdint>

namespace lowrank::ops {

struct AttentionShape {
  int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // sliding window (0 = full causal)
  float scale = 0;     // usually 1/sqrt(head_dim)
  float softcap = 0;   // scores → softcap · tanh(scores / softcap) before the softmax (Gemma 2); 0: none
};

// One attention score from q·k: scaled, then soft-capped when `softcap` > 0 (as transformers:
// (q·k · scale) / cap → tanh → · cap).
inline float attention_score(float dot, float scale, float softcap) {
  const float s = dot * scale;
  return softcap > 0 ? softcap * std::tanh(s / softcap) : s;
}

enum class Act { SiLU, GeluTanh, GeluErf, ReLU };

// The f32 scalars of one AdamW step, rounded where torch rounds them (see train/optimizer.cpp):
//   p = p * decay (if apply_decay); m = lerp(m, g, lerp_w); v = v * beta2 + one_minus_beta2 * g * g
//   p = p + neg_step * (m / (sqrt(v) / bc2_sqrt + eps))
struct AdamWScalars {
  float decay = 1.0f;            // 1 - lr * weight_decay
  bool apply_decay = false;      // false: p is not multiplied (torch skips mul_ when wd == 0)
  float lerp_w = 0.1f;           // 1 - beta1
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float bc2_sqrt = 1.0f;         // sqrt(1 - beta2^t)
  float eps = 1e-8f;
  float neg_step = 0.0f;         // -lr / (1 - beta1^t)
};

}  // namespace lowrank::ops
