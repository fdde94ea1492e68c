#include "lowrank/model/placement.h"

#include <algorithm>
#include <cmath>

#include "lowrank/core/error.h"

namespace lowrank::model {

Placement Placement::single(Device device, int64_t num_layers) { return Placement{{device}, {0, num_layers}}; }

int Placement::stage_of_layer(int64_t layer) const {
  if (layer < 0) return 0;
  if (layer >= num_layers()) return stages() - 1;
  const auto it = std::upper_bound(first_layer.begin(), first_layer.end(), layer);
  return static_cast<int>(it - first_layer.begin()) - 1;
}

PartBytes part_bytes(const ModelConfig& c, DType dtype) {
  const int64_t d = c.hidden_size, I = c.intermediate_size, es = static_cast<int64_t>(dtype_size(dtype));
  PartBytes b;
  b.embed = c.vocab_size * d * es;
  if (c.learned_positions) b.embed += c.max_position_embeddings * d * es;
  const int64_t mlp = (c.gated_mlp ? 3 : 2) * d * I;
  const int64_t attn = d * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * d;
  const int64_t norms = (c.sandwich_norms ? 4 : 2) * d + (c.qk_norm ? 2 * c.head_dim : 0);
  b.layer = (mlp + attn + norms) * es;
  b.head = (c.vocab_size * d + d) * es;
  return b;
}

Placement balance_layers(const ModelConfig& c, const std::vector<Device>& devices, DType dtype) {
  const int S = static_cast<int>(devices.size());
  const int64_t L = c.num_layers;
  LR_CHECK(S >= 1, "balance_layers over no device");
  if (L < S)
    throw error("cannot split a model of ", L, " layer", L == 1 ? "" : "s", " over ", S,
                " devices: every device needs at least one layer");
  const PartBytes b = part_bytes(c, dtype);
  const double total = static_cast<double>(b.embed + L * b.layer + b.head);
  Placement p;
  p.devices = devices;
  p.first_layer.push_back(0);
  for (int s = 0; s + 1 < S; ++s) {
    // Bytes up to and including layer i (the embedding first): choose the end nearest to the target.
    const double target = total * (s + 1) / S;
    const int64_t lo = p.first_layer.back() + 1;  // at least one layer in this stage
    const int64_t hi = L - (S - 1 - s);            // and one in each later stage
    int64_t best = lo;
    double best_gap = INFINITY;
    for (int64_t end = lo; end <= hi; ++end) {
      const double gap = std::abs(static_cast<double>(b.embed + end * b.layer) - target);
      if (gap < best_gap) {
        best_gap = gap;
        best = end;
      }
    }
    p.first_layer.push_back(best);
  }
  p.first_layer.push_back(L);
  return p;
}

}  // namespace lowrank::model
