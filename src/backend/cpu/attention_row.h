#pragma once
// One query row of causal attention on the CPU: the softmax over keys j0..last of the scaled (and
// soft-capped) dot products with q, then the weighted sum of the values into out [hd]. Keys and
// values are found through callables (row j -> const float* [hd]) so that the fused attention and
// the paged decode attention (rows through block tables) share the arithmetic. Returns the row's
// log-sum-exp. p: scratch of at least last + 1 floats.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/attention_kernels.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::cpu {

// p[j0..last] holds the row's dot products q·k_j: turns them into softmax weights (scaled and
// soft-capped scores first), writes out [hd] = Σ_j weight_j · v_j and returns the log-sum-exp.
// Every attention forward on the CPU ends here, so that they all round alike.
template <class ValueRow>
float softmax_values(float* p, int64_t hd, int64_t j0, int64_t last, const ops::AttentionShape& s,
                     ValueRow value_row, float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = j0; j <= last; ++j) {
    p[j] = ops::attention_score(p[j], s.scale, s.softcap);
    mx = std::max(mx, p[j]);
  }
  exp_shifted_(p, j0, last, mx);
  double sum = 0;
  for (int64_t j = j0; j <= last; ++j) sum += p[j];
  const float inv = static_cast<float>(1.0 / sum);
  std::fill(out, out + hd, 0.0f);
  int64_t j = j0;
  for (; j + kRowsAtOnce <= last + 1; j += kRowsAtOnce) {  // four values at a time (attention_kernels.h)
    const float w[kRowsAtOnce] = {p[j] * inv, p[j + 1] * inv, p[j + 2] * inv, p[j + 3] * inv};
    add_rows(out, value_row(j), value_row(j + 1), value_row(j + 2), value_row(j + 3), w, hd);
  }
  for (; j <= last; ++j) {
    const float w = p[j] * inv;
    const float* vj = value_row(j);
    for (int64_t d = 0; d < hd; ++d) out[d] += w * vj[d];
  }
  return mx + static_cast<float>(std::log(sum));
}

template <class KeyRow, class ValueRow>
float attention_row(const float* q, int64_t hd, int64_t j0, int64_t last, const ops::AttentionShape& s,
                    KeyRow key_row, ValueRow value_row, std::vector<float>& p, float* out) {
  for (int64_t j = j0; j <= last; ++j) {
    const float* kj = key_row(j);
    float dot = 0;
    for (int64_t d = 0; d < hd; ++d) dot += q[d] * kj[d];
    p[j] = dot;
  }
  return softmax_values(p.data(), hd, j0, last, s, value_row, out);
}

}  // namespace lowrank::cpu
