#pragma once
// Rotary position embeddings: inverse frequencies for each rope type (as transformers'
// modeling_rope_utils computes them) and the cos/sin tables applied to q and k.
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"

namespace lowrank::model {

struct RopeFrequencies {
  std::vector<double> inv_freq;     // [head_dim / 2]
  double attention_scaling = 1.0;   // multiplies cos and sin (yarn)
};

RopeFrequencies rope_frequencies(const ModelConfig& config);

// cos and sin tables for positions [0, n_positions): each [n_positions, head_dim / 2], f32.
struct RopeTables {
  Tensor cos;  // [P, head_dim/2]
  Tensor sin;  // [P, head_dim/2]
};
RopeTables rope_tables(const RopeFrequencies& f, int64_t n_positions);

}  // namespace lowrank::model
