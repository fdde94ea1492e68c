// The batched KV-cached forward: rows of many sequences at positions of their own, with keys and
// values kept by an AttentionCache (the paged cache of infer/batch_decoder.cpp). The same layers
// as hidden_states (forward.cpp); only the positions and the attention differ.
#include <algorithm>

#include "lowrank/core/error.h"
#include "lowrank/model/model.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {

Tensor Model::hidden_states_at(const TokenBatch& batch, const std::vector<int32_t>& pos, ProjectionHook* hook,
                               AttentionCache& attention) const {
  const ModelConfig& c = config_;
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  LR_CHECK(N > 0 && static_cast<int64_t>(batch.ids.size()) == N && static_cast<int64_t>(pos.size()) == N,
           "batch of ", batch.ids.size(), " ids and ", pos.size(), " positions for ", B, "x", T);
  const int32_t max_pos = *std::max_element(pos.begin(), pos.end());
  LR_CHECK(*std::min_element(pos.begin(), pos.end()) >= 0, "negative position");
  if (max_pos >= c.max_position_embeddings && c.learned_positions)
    throw error("sequence of ", max_pos + 1, " tokens is longer than the model's ", c.max_position_embeddings,
                " positions");
  Tensor x = ops::embedding(weights_.embed, batch.ids);
  if (hook) hook->on_embedding(weights_.embed, batch.ids, x);
  if (c.scale_embeddings) ops::scale_(x, c.embedding_scale(x.dtype()));
  if (weights_.positions.defined()) {
    Tensor p = ops::embedding(weights_.positions, pos);
    ops::add_(x, p);
  }
  const Tensor pos_dev = Tensor::from_ints(pos, device_);
  // start + seq = the positions the RoPE tables must cover (and LongRoPE's choice of factors: the
  // caller batches only sequences on the same side of its switch).
  LayerInput in{B, T, max_pos + 1 - T, &pos_dev, hook, nullptr, false, &attention};
  for (int64_t li = 0; li < c.num_layers; ++li) {
    LayerActivations a;
    x = layer_forward(li, x, in, a);
  }
  return normalize(weights_.final_norm, x, nullptr, nullptr);
}

}  // namespace lowrank::model
