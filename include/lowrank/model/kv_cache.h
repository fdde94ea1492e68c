#pragma once
// Key/value cache for incremental decoding of one sequence: per layer, the post-RoPE keys and the
// values of every position seen so far.
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::model {

struct KVCache {
  int64_t length = 0;     // positions filled
  int64_t capacity = 0;
  std::vector<Tensor> k;  // per layer [capacity, KV*hd]
  std::vector<Tensor> v;  // per layer [capacity, KV*hd]

  static KVCache create(const ModelConfig& config, int64_t capacity);
  // Stores rows of k_new/v_new [n, KV*hd] at positions [length, length + n) of `layer`.
  void append(int layer, const Tensor& k_new, const Tensor& v_new);
};

// Attention of n new queries q [n, H*hd] at positions [start, start + n) over the cache's
// positions [0, start + n) of `layer` (causal; s's window, scale and soft-capping; s.batch and
// s.seq are unused) -> [n, H*hd].
Tensor cached_attention(const Tensor& q, const KVCache& cache, int layer, int64_t start, const ops::AttentionShape& s);

}  // namespace lowrank::model
