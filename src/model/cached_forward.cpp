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
  const Tensor pos_dev = Tensor::from_ints(pos, device_);
  return layers_at(x, pos_dev, B, T, max_pos, hook, attention);
}

Tensor Model::hidden_states_at(const Tensor& ids, const Tensor& pos, int64_t batch, int64_t seq, int64_t max_pos,
                               ProjectionHook* hook, AttentionCache& attention) const {
  LR_CHECK(ids.dtype() == DType::I32 && pos.dtype() == DType::I32 && ids.numel() == batch * seq &&
               pos.numel() == ids.numel() && ids.device() == device_ && pos.device() == device_,
           "hidden_states_at: ids ", ids.str(), " pos ", pos.str(), " for ", batch, "x", seq);
  if (max_pos >= config_.max_position_embeddings && config_.learned_positions)
    throw error("sequence of ", max_pos + 1, " tokens is longer than the model's ", config_.max_position_embeddings,
                " positions");
  return layers_at(ops::embedding(weights_.embed, ids), pos, batch, seq, max_pos, hook, attention);
}

// The embedded rows x [N, d] through the scaling, the learned positions, the layers and the final norm.
Tensor Model::layers_at(Tensor x, const Tensor& pos, int64_t B, int64_t T, int64_t max_pos, ProjectionHook* hook,
                        AttentionCache& attention) const {
  const ModelConfig& c = config_;
  if (c.scale_embeddings) ops::scale_(x, c.embedding_scale(x.dtype()));
  if (weights_.positions.defined()) {
    Tensor p = ops::embedding(weights_.positions, pos);
    ops::add_(x, p);
  }
  // start + seq = the positions the RoPE tables must cover (and LongRoPE's choice of factors: the
  // caller batches only sequences on the same side of its switch).
  LayerInput in{B, T, max_pos + 1 - T, &pos, hook, nullptr, false, &attention};
  for (int64_t li = 0; li < c.num_layers; ++li) {
    LayerActivations a;
    x = layer_forward(li, x, in, a);
  }
  return normalize(weights_.final_norm, x, nullptr, nullptr);
}

}  // namespace lowrank::model
