#pragma once
// Rotary position embeddings: inverse frequencies for each rope type (as transformers'
// modeling_rope_utils computes them) and the cos/sin tables applied to q and k.
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"

namespace lowrank::model {

struct RopeFrequencies {
  std::vector<double> inv_freq;     // [rotary_dim / 2]
  double attention_scaling = 1.0;   // multiplies cos and sin (yarn)
};

// The frequencies of `rope` for `config`'s heads. LongRoPE has two sets; `long_factors` picks the
// one transformers uses while the sequence is longer than original_max_position_embeddings.
RopeFrequencies rope_frequencies(const ModelConfig& config, const RopeConfig& rope, bool long_factors = false);
RopeFrequencies rope_frequencies(const ModelConfig& config);  // config.rope
// Whether a forward over positions [0, seq_len) uses LongRoPE's long factors (transformers decides
// by the largest position of the call, for every position of it).
bool uses_long_factors(const RopeConfig& rope, int64_t seq_len);

// cos and sin tables for positions [0, n_positions): each [n_positions, rotary_dim / 2], f32.
struct RopeTables {
  Tensor cos;  // [P, rotary_dim/2]
  Tensor sin;  // [P, rotary_dim/2]
};
RopeTables rope_tables(const RopeFrequencies& f, int64_t n_positions);

}  // namespace lowrank::model
