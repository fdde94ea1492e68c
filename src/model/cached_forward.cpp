// The batched KV-cached forward: rows of many sequences at positions of their own, with keys and
// values kept by an AttentionCache (the paged cache of infer/batch_decoder.cpp). The same layers
// as hidden_states (forward.cpp); only the positions and the attention differ.
#include <algorithm>
#include <cstdlib>
#include <string_view>

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
  const bool fused = fused_decode(x, hook);
  if (fused) {
    const Tensor y = decode_stack(x, in);
    if (y.defined()) return normalize(weights_.final_norm, y, nullptr, nullptr);
  }
  for (int64_t li = 0; li < c.num_layers; ++li) {
    if (fused) {
      x = decode_layer(li, x, in);
      continue;
    }
    LayerActivations a;
    x = layer_forward(li, x, in, a);
  }
  return normalize(weights_.final_norm, x, nullptr, nullptr);
}

bool Model::fused_decode(const Tensor& x, const ProjectionHook* hook) const {
  static const bool disabled = [] {  // LOWRANK_FUSED_DECODE=0: the unfused ops (for A/B timing)
    const char* v = std::getenv("LOWRANK_FUSED_DECODE");
    return v && std::string_view(v) == "0";
  }();
  const ModelConfig& c = config_;
  // One row (a single stream): with more, each weight element feeds several rows on CUDA cores,
  // and cuBLASLt's tensor-core GEMMs win (measured: Llama-3-8B shape, 4 rows, 420 vs 706 tok/s).
  if (disabled || !x.device().is_cuda() || x.dtype() != DType::BF16 || x.dim(0) != 1) return false;
  if (c.norm != NormKind::RMS || c.qk_norm || c.sandwich_norms || c.fused_qkv || c.fused_gate_up || !c.gated_mlp ||
      c.activation != Activation::SiLU || c.learned_positions || placement_.split())
    return false;
  for (const LayerWeights& L : weights_.layers)
    for (const Linear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (l->quantized() || !l->weight.defined() || (l->bias.defined() && l->target != Target::Q &&
                                                     l->target != Target::K && l->target != Target::V))
        return false;
  if (!hook) return true;
  for (int li = 0; li < static_cast<int>(c.num_layers); ++li)
    for (const Target t : {Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down}) {
      LowRankUpdate u;
      if (!hook->low_rank_update(li, t, u)) return false;
      if (u.A.defined() && (u.A.dtype() != DType::BF16 || u.B.dtype() != DType::BF16)) return false;
    }
  return true;
}

Tensor Model::decode_layer(int64_t li, const Tensor& x, const LayerInput& in) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[li];
  const float eps = static_cast<float>(c.norm_eps);
  // x_mid = x + o(attention(rope(q), rope(k), v)) with q, k, v of rmsnorm(x)
  const RopeTables& tables = rope(li, in.start + in.seq);
  const ops::RotaryRows rotary{*in.pos, tables.cos, tables.sin, {c.num_heads, c.num_kv_heads, 0}};
  auto updates = [&](std::initializer_list<Target> targets) {  // the hook's (fused_decode checked them)
    std::vector<LowRankUpdate> us(targets.size());
    size_t i = 0;
    for (const Target t : targets) {
      if (in.hook) in.hook->low_rank_update(static_cast<int>(li), t, us[i]);
      ++i;
    }
    return us;
  };
  // With the cache's paged view of the row, k and v go into their pool rows from the projections'
  // kernel (one launch fewer than attend(), which writes them first).
  ops::KVWrite kv;
  ops::DecodeRow row;
  const bool paged = in.attention && in.attention->paged_row(static_cast<int>(li), kv.k_pool, kv.v_pool, row);
  kv.slots = row.slot;
  std::vector<Tensor> qkv =
      ops::norm_linears(x, L.attn_norm.weight, eps, {L.q.weight, L.k.weight, L.v.weight},
                        {L.q.bias, L.k.bias, L.v.bias}, &rotary, updates({Target::Q, Target::K, Target::V}),
                        paged ? &kv : nullptr);
  const ops::AttentionShape shape{in.batch, in.seq, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window[li],
                                  c.attention_scale(), static_cast<float>(c.attn_softcap)};
  const Tensor x_mid =
      paged ? ops::paged_attention_residual(qkv[0], kv.k_pool, kv.v_pool, row.table, row.len, row.block_size,
                                            row.max_len, shape, L.o.weight, x, updates({Target::O}))
            : ops::linear_residual(in.attention->attend(static_cast<int>(li), qkv[0], qkv[1], qkv[2], shape),
                                   L.o.weight, x, updates({Target::O}));
  // x_out = x_mid + down(swiglu(gate(rmsnorm(x_mid)), up(rmsnorm(x_mid))))
  const Tensor act = ops::norm_swiglu(x_mid, L.mlp_norm.weight, eps, L.gate.weight, L.up.weight,
                                      updates({Target::Gate, Target::Up}));
  return ops::linear_residual(act, L.down.weight, x_mid, updates({Target::Down}));
}

Tensor Model::decode_stack(const Tensor& x, const LayerInput& in) const {
  // Opt-in (LOWRANK_DECODE_STACK=1): the one-launch kernel is exact but not yet faster than the
  // fused launches per layer (docs/cuda.md, "One launch for all layers").
  static const bool enabled = [] {
    const char* v = std::getenv("LOWRANK_DECODE_STACK");
    return v && std::string_view(v) == "1";
  }();
  if (!enabled) return Tensor();
  const ModelConfig& c = config_;
  std::vector<ops::DecodeLayer> layers(c.num_layers);
  ops::DecodeRow row;
  for (int64_t li = 0; li < c.num_layers; ++li) {
    ops::DecodeLayer& D = layers[li];
    if (!in.attention->paged_row(static_cast<int>(li), D.k_pool, D.v_pool, row)) return Tensor();
    const LayerWeights& L = weights_.layers[li];
    D.attn_norm = L.attn_norm.weight;
    D.mlp_norm = L.mlp_norm.weight;
    D.q = L.q.weight;
    D.k = L.k.weight;
    D.v = L.v.weight;
    D.o = L.o.weight;
    D.q_bias = L.q.bias;
    D.k_bias = L.k.bias;
    D.v_bias = L.v.bias;
    D.gate = L.gate.weight;
    D.up = L.up.weight;
    D.down = L.down.weight;
    constexpr Target targets[7] = {Target::Q,    Target::K,  Target::V,   Target::O,
                                   Target::Gate, Target::Up, Target::Down};  // DecodeLayer::lora's order
    for (int t = 0; in.hook && t < 7; ++t) in.hook->low_rank_update(static_cast<int>(li), targets[t], D.lora[t]);
    const RopeTables& tables = rope(li, in.start + in.seq);
    D.cos = tables.cos;
    D.sin = tables.sin;
    D.window = c.sliding_window[li];
  }
  row.pos = *in.pos;
  row.heads = c.num_heads;
  row.kv_heads = c.num_kv_heads;
  row.head_dim = c.head_dim;
  row.eps = static_cast<float>(c.norm_eps);
  row.scale = c.attention_scale();
  row.softcap = static_cast<float>(c.attn_softcap);
  return ops::decode_stack(x, layers, row);
}

}  // namespace lowrank::model
