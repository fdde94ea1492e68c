#include <cmath>
#include <cstring>

#include "lowrank/core/error.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/model.h"
#include "lowrank/model/activation.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {
namespace {

Tensor project(const Linear& l, int layer, Target t, const Tensor& x, ProjectionHook* hook) {
  Tensor y = ops::linear(x, l.weight, l.bias);
  if (hook) hook->on_projection(layer, t, l, x, y);
  return y;
}

Tensor normalize(const ModelConfig& c, const Norm& n, const Tensor& x, Tensor* mean, Tensor* rstd) {
  return c.is_gpt2() ? ops::layernorm(x, n.weight, n.bias, static_cast<float>(c.norm_eps), mean, rstd)
                     : ops::rmsnorm(x, n.weight, static_cast<float>(c.norm_eps), rstd);
}

// Copies columns [begin, begin + width) of x [n, cols] into a new [n, width] tensor.
Tensor columns(const Tensor& x, int64_t begin, int64_t width) {
  Tensor out = Tensor::empty({x.dim(0), width}, x.dtype(), x.device());
  ops::copy_columns_(out, 0, x, begin, width);
  return out;
}

}  // namespace

Model::Model(ModelConfig config, ModelWeights weights, Device device)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device) {
  if (!config_.is_gpt2()) rope_freq_ = rope_frequencies(config_);
}

Model Model::load(const std::string& dir, Device device, DType dtype) {
  ModelConfig config = ModelConfig::load(dir);
  io::TensorStore store = io::TensorStore::open(dir);
  Model m(config, load_weights(config, store, dtype, device), device);
  m.source_ = dir;
  return m;
}

const RopeTables& Model::rope(int64_t n) const {
  if (!rope_tables_.cos.defined() || rope_tables_.cos.dim(0) < n) {
    int64_t size = std::max<int64_t>(n, std::max<int64_t>(config_.max_position_embeddings, 1));
    RopeTables t = rope_tables(rope_freq_, size);  // f32 on the CPU, then on the model's device
    rope_tables_ = {t.cos.to(device_), t.sin.to(device_)};
  }
  return rope_tables_;
}

int64_t Model::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, t] : checkpoint_tensors(config_, weights_)) n += t.numel();
  return n;
}

Tensor Model::layer_forward(int64_t li, const Tensor& x, const LayerInput& in, LayerActivations& a) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[li];
  const int layer = static_cast<int>(li);
  ProjectionHook* hook = in.hook;
  a.x_in = x;
  a.xn1 = normalize(c, L.attn_norm, x, &a.norm1_mean, &a.norm1_rstd);
  if (c.is_gpt2()) {
    Tensor qkv = project(L.qkv, layer, Target::CAttn, a.xn1, hook);
    const int64_t d = c.hidden_size;
    a.q = columns(qkv, 0, d);
    a.k = columns(qkv, d, d);
    a.v = columns(qkv, 2 * d, d);
  } else {
    a.q = project(L.q, layer, Target::Q, a.xn1, hook);
    a.k = project(L.k, layer, Target::K, a.xn1, hook);
    a.v = project(L.v, layer, Target::V, a.xn1, hook);
    if (c.qk_norm) {
      a.q_raw = a.q;
      a.k_raw = a.k;
      const float eps = static_cast<float>(c.norm_eps);
      // Per head: rows of head_dim ([N*H, hd] views of [N, H*hd]).
      const int64_t n = a.q.dim(0), hd = c.head_dim;
      a.q = ops::rmsnorm(a.q.reshape({n * c.num_heads, hd}), L.q_norm.weight, eps, &a.q_rstd)
                .reshape({n, c.q_dim()});
      a.k = ops::rmsnorm(a.k.reshape({n * c.num_kv_heads, hd}), L.k_norm.weight, eps, &a.k_rstd)
                .reshape({n, c.kv_dim()});
    }
    const RopeTables& tables = rope(in.start + in.seq);
    ops::rope_(a.q, c.num_heads, *in.pos, tables.cos, tables.sin);
    ops::rope_(a.k, c.num_kv_heads, *in.pos, tables.cos, tables.sin);
  }
  ops::AttentionShape shape{in.batch, in.seq, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window[li],
                            static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};
  if (in.kv) {
    in.kv->append(layer, a.k, a.v);
    a.attn = cached_attention(a.q, *in.kv, layer, in.start, c.num_heads, c.num_kv_heads, c.head_dim,
                              c.sliding_window[li]);
  } else {
    a.attn = ops::attention(a.q, a.k, a.v, shape, in.save_lse ? &a.lse : nullptr);
  }
  // Residual adds in place into the fresh projection outputs (one pass, no copy of x).
  a.x_mid = project(L.o, layer, c.is_gpt2() ? Target::CProj : Target::O, a.attn, hook);
  ops::add_(a.x_mid, x);
  a.xn2 = normalize(c, L.mlp_norm, a.x_mid, &a.norm2_mean, &a.norm2_rstd);
  Tensor down;
  if (c.is_gpt2()) {
    a.up = project(L.up, layer, Target::CFc, a.xn2, hook);
    a.act = ops::activation(a.up, op_activation(c.activation));
    down = project(L.down, layer, Target::MlpCProj, a.act, hook);
  } else {
    a.gate = project(L.gate, layer, Target::Gate, a.xn2, hook);
    a.up = project(L.up, layer, Target::Up, a.xn2, hook);
    a.act = c.activation == Activation::SiLU ? ops::swiglu(a.gate, a.up)
                                             : ops::activation(a.gate, op_activation(c.activation));
    if (c.activation != Activation::SiLU) ops::mul_(a.act, a.up);  // act(gate) * up (non-SiLU gated MLPs)
    down = project(L.down, layer, Target::Down, a.act, hook);
  }
  ops::add_(down, a.x_mid);
  return down;
}

Tensor Model::hidden_states(const TokenBatch& batch, ProjectionHook* hook, ForwardCache* cache, KVCache* kv) const {
  const ModelConfig& c = config_;
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  LR_CHECK(static_cast<int64_t>(batch.ids.size()) == N, "batch of ", batch.ids.size(), " ids for ", B, "x", T);
  LR_CHECK(!kv || (B == 1 && !cache), "KV-cached forward takes one sequence and no backward cache");
  if (kv && device_.is_cuda()) throw error("KV-cached generation on CUDA is not supported yet (use --device cpu)");
  const int64_t start = kv ? kv->length : 0;
  if (start + T > c.max_position_embeddings && c.is_gpt2())
    throw error("sequence of ", start + T, " tokens is longer than the model's ", c.max_position_embeddings,
                " positions");
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(start + i % T);

  Tensor x = ops::embedding(weights_.embed, batch.ids);
  if (hook) hook->on_embedding(weights_.embed, batch.ids, x);
  if (weights_.positions.defined()) {
    Tensor p = ops::embedding(weights_.positions, pos);
    ops::add_(x, p);
  }
  if (cache) cache->layers.assign(c.num_layers, {});
  const Tensor pos_dev = Tensor::from_ints(pos, device_);  // uploaded once for every layer's RoPE
  if (!c.is_gpt2()) rope(start + T);                         // tables cover every position
  LayerInput in{B, T, start, &pos_dev, hook, kv, cache != nullptr};
  for (int64_t li = 0; li < c.num_layers; ++li) {
    LayerActivations a;
    Tensor next = layer_forward(li, x, in, a);
    if (cache) {
      if (cache->checkpointing) cache->layers[li].x_in = a.x_in;  // the rest is recomputed in backward
      else cache->layers[li] = std::move(a);
    }
    x = next;
  }
  if (kv) kv->length += T;
  Tensor mean, rstd;
  Tensor h = normalize(c, weights_.final_norm, x, &mean, &rstd);
  if (cache) {
    cache->x_final = x;
    cache->final_mean = mean;
    cache->final_rstd = rstd;
    cache->hidden = h;
  }
  return h;
}

Tensor Model::project_vocab(const Tensor& hidden, ProjectionHook* hook) const {
  // f32 logits on every device: the loss and sampling need their precision.
  Tensor y = Tensor::empty({hidden.dim(0), weights_.lm_head.dim(0)}, DType::F32, hidden.device());
  ops::matmul_nt(hidden, weights_.lm_head, y);
  if (hook) hook->on_projection(static_cast<int>(config_.num_layers), Target::LmHead, lm_head_linear(), hidden, y);
  return y;
}

Tensor Model::logits(const TokenBatch& batch, ProjectionHook* hook) const {
  return project_vocab(hidden_states(batch, hook), hook);
}

double labelled_nll(const Model& model, const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                    int64_t* count, ProjectionHook* hook) {
  LR_CHECK(targets.size() == ids.size(), ids.size(), " ids with ", targets.size(), " targets");
  *count = 0;
  if (ids.empty()) return 0.0;
  TokenBatch b{ids, 1, static_cast<int64_t>(ids.size())};
  Tensor h = model.hidden_states(b, hook);
  // Chunk the vocabulary projection so that [T, V] logits never exist at once for long sequences.
  const int64_t chunk = 256;
  double total = 0;
  for (int64_t r = 0; r < b.seq; r += chunk) {
    const int64_t end = std::min<int64_t>(r + chunk, b.seq);
    std::vector<int32_t> t(targets.begin() + r, targets.begin() + end);
    bool any = false;
    for (int32_t v : t) any = any || v != -100;
    if (!any) continue;
    Tensor logits = model.project_vocab(h.slice_rows(r, end), hook);
    int64_t n = 0;
    total += ops::cross_entropy_sum(logits, t, &n);
    *count += n;
  }
  return total;
}

double sequence_nll(const Model& model, const std::vector<int32_t>& ids, int64_t* count, ProjectionHook* hook) {
  *count = 0;
  if (ids.size() < 2) return 0.0;
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(-100);  // the last position predicts nothing
  return labelled_nll(model, ids, targets, count, hook);
}

}  // namespace lowrank::model
