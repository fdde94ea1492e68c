#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/model.h"
#include "lowrank/model/activation.h"
#include "lowrank/model/norm.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {
namespace {

// y = x Wᵀ + b + the hook's additions [+ residual]. Whatever comes before the frozen product (the
// hook's terms written first, the residual stream) is read by its GEMM's epilogue (beta = 1): one
// pass over y fewer than adding it afterwards.
// An x wider than the weight's input is the hook's extended input (ProjectionHook::extended_input):
// the frozen product reads its first columns.
Tensor project(const Linear& l, int layer, const Tensor& x, ProjectionHook* hook, const Tensor& residual = Tensor()) {
  const HookOrder order = hook ? hook->projection_order(layer, l.target) : HookOrder::None;
  const bool wide = x.dim(1) != l.in_features();
  const Tensor w = wide ? l.compute_weight() : l.gemm_weight();  // column blocks need f32
  // y = x Wᵀ + beta · y, on x's first columns when x is the hook's extended input.
  auto frozen = [&](Tensor& out, float beta) {
    if (!wide) return ops::matmul_nt(x, w, out, 1.0f, beta);
    ops::matmul_blocks(ops::Gemm::NT, {x, 0, w.dim(1)}, ops::ColumnBlock::all(w), ops::ColumnBlock::all(out), 1.0f, beta);
  };
  Tensor y;
  if (order == HookOrder::Before) {
    if (!hook->on_projection_before(layer, l.target, l, x, residual, y)) frozen(y, 1.0f);
    if (l.bias.defined()) ops::add_bias_(y, l.bias);
    return y;
  }
  if (wide) {  // a frozen projection beside the hook's (k of a q, v adapter): no hook of its own here
    LR_CHECK(order == HookOrder::None && !residual.defined(), "projection ", l.name,
             ": an extended input for a hook after it");
    y = Tensor::empty({x.dim(0), w.dim(0)}, x.dtype(), x.device());
    frozen(y, 0.0f);
    if (l.bias.defined()) ops::add_bias_(y, l.bias);
    return y;
  }
  if (order == HookOrder::None && residual.defined() && !l.bias.defined()) return ops::matmul_nt_add(x, w, residual);
  y = ops::linear(x, w, l.bias);
  if (order == HookOrder::After) hook->on_projection(layer, l.target, l, x, y);
  if (residual.defined()) ops::add_(y, residual);
  return y;
}

// Copies columns [begin, begin + width) of x [n, cols] into a new [n, width] tensor.
Tensor columns(const Tensor& x, int64_t begin, int64_t width) {
  Tensor out = Tensor::empty({x.dim(0), width}, x.dtype(), x.device());
  ops::copy_columns_(out, 0, x, begin, width);
  return out;
}

}  // namespace

Model::Model(ModelConfig config, ModelWeights weights, Device device)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device),
      placement_(Placement::single(device, config_.num_layers)) {}

Model::Model(ModelConfig config, ModelWeights weights, Placement placement)
    : config_(std::move(config)), weights_(std::move(weights)), device_(placement.devices.at(0)),
      placement_(std::move(placement)) {
  LR_CHECK(placement_.num_layers() == config_.num_layers, "placement of ", placement_.num_layers(), " layers for ",
           config_.num_layers);
}

void Model::untie_lm_head() {
  if (weights_.lm_head_name != weights_.embed_name) return;
  if (weights_.lm_head.raw() == weights_.embed.raw()) weights_.lm_head = weights_.lm_head.clone();
  weights_.lm_head_name = "lm_head.weight";
  config_.tie_word_embeddings = false;
}

Model Model::load(const std::string& dir, Device device, DType dtype, Quantization quantize) {
  ModelConfig config = ModelConfig::load(dir);
  io::TensorStore store = io::TensorStore::open(dir);
  Model m(config, load_weights(config, store, dtype, device, quantize), device);
  m.source_ = dir;
  return m;
}

Model Model::load_split(const std::string& dir, const std::vector<Device>& devices, DType dtype,
                        Quantization quantize) {
  ModelConfig config = ModelConfig::load(dir);
  io::TensorStore store = io::TensorStore::open(dir);
  Placement placement = balance_layers(config, devices, dtype);
  Model m(config, load_weights(config, store, dtype, placement, quantize), placement);
  m.source_ = dir;
  return m;
}

const RopeTables& Model::rope(int64_t layer, int64_t n) const {
  const RopeConfig& r = config_.rope_of_layer(layer);
  const bool sliding = &r != &config_.rope;
  const bool long_factors = uses_long_factors(r, n);
  const Device device = layer_device(layer);
  auto on_device = std::find_if(rope_tables_.begin(), rope_tables_.end(), [&](const auto& e) { return e.first == device; });
  std::array<RopeTables, 4>& tables =
      on_device != rope_tables_.end() ? on_device->second : rope_tables_.emplace_back(device, std::array<RopeTables, 4>{}).second;
  RopeTables& t = tables[2 * sliding + long_factors];
  if (!t.cos.defined() || t.cos.dim(0) < n) {
    int64_t size = std::max<int64_t>(n, std::max<int64_t>(config_.max_position_embeddings, 1));
    RopeTables host = rope_tables(rope_frequencies(config_, r, long_factors), size);  // f32 on the CPU
    t = {host.cos.to(device), host.sin.to(device)};
  }
  return t;
}

bool Model::rope_changes(int64_t cached, int64_t total) const {
  for (const RopeConfig* r : {&config_.rope, config_.sliding_rope ? &*config_.sliding_rope : nullptr})
    if (r && uses_long_factors(*r, cached) != uses_long_factors(*r, total)) return true;
  return false;
}

Tensor Model::normalize(const Norm& n, const Tensor& x, Tensor* mean, Tensor* rstd, const ops::ColumnBlock* into) const {
  return model::normalize(config_.norm, static_cast<float>(config_.norm_eps), n, x, mean, rstd, into);
}

namespace {
// The hook's extended buffer for the norm output that feeds shared input `group` (see
// ProjectionHook::extended_input), as the block the norm writes; null when there is none.
std::optional<ops::ColumnBlock> extension(ProjectionHook* hook, int layer, int group, const Tensor& x) {
  const Tensor ext = hook ? hook->extended_input(layer, group, x) : Tensor();
  if (!ext.defined()) return std::nullopt;
  return ops::ColumnBlock{ext, 0, x.dim(1)};
}
}  // namespace

int64_t Model::parameter_count() const {
  return model::parameter_count(weights_);
}

Tensor Model::layer_forward(int64_t li, const Tensor& x, const LayerInput& in, LayerActivations& a) const {
  const ModelConfig& c = config_;
  const LayerWeights& L = weights_.layers[li];
  const int layer = static_cast<int>(li);
  ProjectionHook* hook = in.hook;
  a.x_in = x;
  // Attention block: x_mid = x + [post_norm](o(attention(q, k, v)))
  const auto ext1 = c.fused_qkv ? std::nullopt : extension(hook, layer, 0, x);
  a.xn1 = normalize(L.attn_norm, x, &a.norm1_mean, &a.norm1_rstd, ext1 ? &*ext1 : nullptr);
  // The hook's q, k, v as one product (LoRA's stacked K-extension): RoPE and attention on its blocks.
  if (ext1 && !c.qk_norm && !in.kv && !in.attention) a.qkv = hook->stacked_projection(layer, a.xn1);
  if (a.qkv.defined()) {
    // nothing to project
  } else if (c.fused_qkv) {  // [q | k | v] columns, GQA widths
    Tensor qkv = project(L.qkv, layer, a.xn1, hook);
    a.q = columns(qkv, 0, c.q_dim());
    a.k = columns(qkv, c.q_dim(), c.kv_dim());
    a.v = columns(qkv, c.q_dim() + c.kv_dim(), c.kv_dim());
  } else {
    a.q = project(L.q, layer, a.xn1, hook);
    a.k = project(L.k, layer, a.xn1, hook);
    a.v = project(L.v, layer, a.xn1, hook);
  }
  if (c.qk_norm) {
    a.q_raw = a.q;
    a.k_raw = a.k;
    const float eps = static_cast<float>(c.norm_eps);
    // Per head: rows of head_dim ([N*H, hd] views of [N, H*hd]).
    const int64_t n = a.q.dim(0), hd = c.head_dim;
    a.q = model::normalize(c.norm, eps, L.q_norm, a.q.reshape({n * c.num_heads, hd}), nullptr, &a.q_rstd)
              .reshape({n, c.q_dim()});
    a.k = model::normalize(c.norm, eps, L.k_norm, a.k.reshape({n * c.num_kv_heads, hd}), nullptr, &a.k_rstd)
              .reshape({n, c.kv_dim()});
  }
  if (!c.learned_positions) {
    const RopeTables& tables = rope(li, in.start + in.seq);
    if (a.qkv.defined()) {  // q's heads, then k's: one block
      ops::rope_columns_({a.qkv, 0, c.q_dim() + c.kv_dim()}, c.num_heads + c.num_kv_heads, *in.pos, tables.cos,
                         tables.sin);
    } else {
      ops::rope_(a.q, c.num_heads, *in.pos, tables.cos, tables.sin);
      ops::rope_(a.k, c.num_kv_heads, *in.pos, tables.cos, tables.sin);
    }
  }
  const ops::AttentionShape shape{in.batch, in.seq, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window[li],
                                  c.attention_scale(), static_cast<float>(c.attn_softcap)};
  if (a.qkv.defined()) {
    a.attn = ops::attention_packed(a.qkv, shape, in.save_lse ? &a.lse : nullptr);
  } else if (in.attention) {
    a.attn = in.attention->attend(layer, a.q, a.k, a.v, shape);
  } else if (in.kv) {
    in.kv->append(layer, a.k, a.v);
    a.attn = cached_attention(a.q, *in.kv, layer, in.start, shape);
  } else {
    a.attn = ops::attention(a.q, a.k, a.v, shape, in.save_lse ? &a.lse : nullptr);
  }
  // A replay with the residual streams kept skips the projections that only feed them.
  const bool replay_kept = in.kept && in.kept->x_mid.defined();
  auto skip_output = [&](const Linear& l, const Tensor& input) {
    return replay_kept && (!hook || hook->on_projection_input_only(layer, l.target, l, input));
  };
  if (skip_output(L.o, a.attn)) {
    a.x_mid = in.kept->x_mid;
  } else if (c.sandwich_norms) {  // the residual add in place into the post-norm's fresh output
    a.o_out = project(L.o, layer, a.attn, hook);
    a.x_mid = normalize(L.post_attn_norm, a.o_out, nullptr, &a.post_attn_rstd);
    ops::add_(a.x_mid, x);
  } else {
    a.x_mid = project(L.o, layer, a.attn, hook, x);
  }
  // MLP block: x_out = x_mid + [post_norm](down(act(gate) * up))   (ungated: down(act(up)))
  const auto ext2 = c.fused_gate_up || !c.gated_mlp ? std::nullopt : extension(hook, layer, 1, a.x_mid);
  a.xn2 = normalize(L.mlp_norm, a.x_mid, &a.norm2_mean, &a.norm2_rstd, ext2 ? &*ext2 : nullptr);
  if (c.fused_gate_up) {  // [gate | up] columns
    Tensor gate_up = project(L.gate_up, layer, a.xn2, hook);
    a.gate = columns(gate_up, 0, c.intermediate_size);
    a.up = columns(gate_up, c.intermediate_size, c.intermediate_size);
  } else {
    if (c.gated_mlp) a.gate = project(L.gate, layer, a.xn2, hook);
    a.up = project(L.up, layer, a.xn2, hook);
  }
  if (!c.gated_mlp) {
    a.act = ops::activation(a.up, op_activation(c.activation));
  } else if (c.activation == Activation::SiLU) {
    a.act = ops::swiglu(a.gate, a.up);
  } else {  // act(gate) * up
    a.act = ops::activation(a.gate, op_activation(c.activation));
    ops::mul_(a.act, a.up);
  }
  if (skip_output(L.down, a.act)) return Tensor();  // the next layer's input is kept
  if (!c.sandwich_norms) return project(L.down, layer, a.act, hook, a.x_mid);
  a.down_out = project(L.down, layer, a.act, hook);
  Tensor out = normalize(L.post_mlp_norm, a.down_out, nullptr, &a.post_mlp_rstd);
  ops::add_(out, a.x_mid);
  return out;
}

Tensor Model::hidden_states(const TokenBatch& batch, ProjectionHook* hook, ForwardCache* cache, KVCache* kv) const {
  const ModelConfig& c = config_;
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  LR_CHECK(static_cast<int64_t>(batch.ids.size()) == N, "batch of ", batch.ids.size(), " ids for ", B, "x", T);
  LR_CHECK(!kv || (B == 1 && !cache), "KV-cached forward takes one sequence and no backward cache");
  if (kv && device_.is_cuda()) throw error("KV-cached generation on CUDA is not supported yet (use --device cpu)");
  const int64_t start = kv ? kv->length : 0;
  if (start + T > c.max_position_embeddings && c.learned_positions)
    throw error("sequence of ", start + T, " tokens is longer than the model's ", c.max_position_embeddings,
                " positions");
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(start + i % T);

  Tensor x = embed(batch, pos, hook);
  if (cache) cache->layers.assign(c.num_layers, {});
  // Uploaded once for every layer's RoPE (per device), unless the caller already has them there.
  Tensor pos_dev = batch.device_pos.defined() ? batch.device_pos : Tensor::from_ints(pos, device_);
  LayerInput in{B, T, start, &pos_dev, hook, kv, cache != nullptr};
  for (int64_t li = 0; li < c.num_layers; ++li) {
    if (const Device d = layer_device(li); !(x.device() == d)) {  // the next stage of a split model
      x = x.to(d);
      pos_dev = Tensor::from_ints(pos, d);
    }
    LayerActivations a;
    Tensor next = layer_forward(li, x, in, a);
    if (cache) {
      cache->layers[li] = cache->checkpointing ? checkpoint_kept(std::move(a), c) : std::move(a);
    }
    x = next;
  }
  if (kv) kv->length += T;
  x = x.to(layer_device(c.num_layers));  // the final norm's and lm_head's device
  Tensor mean, rstd;
  Tensor h = normalize(weights_.final_norm, x, &mean, &rstd);
  if (cache) {
    cache->x_final = x;
    cache->final_mean = mean;
    cache->final_rstd = rstd;
    cache->hidden = h;
  }
  return h;
}

LayerActivations checkpoint_kept(LayerActivations&& a, const ModelConfig& config) {
  LayerActivations kept;
  kept.x_in = std::move(a.x_in);
  if (!config.sandwich_norms) kept.x_mid = std::move(a.x_mid);
  return kept;
}

Tensor Model::embed(const TokenBatch& batch, const std::vector<int32_t>& pos, ProjectionHook* hook) const {
  Tensor x = batch.device_ids.defined() ? ops::embedding(weights_.embed, batch.device_ids)
                                         : ops::embedding(weights_.embed, batch.ids);
  if (hook) hook->on_embedding(weights_.embed, batch.ids, x);  // PEFT's embedding LoRA is inside embed_tokens
  if (config_.scale_embeddings) ops::scale_(x, config_.embedding_scale(x.dtype()));
  if (weights_.positions.defined()) {
    Tensor p = batch.device_pos.defined() ? ops::embedding(weights_.positions, batch.device_pos)
                                          : ops::embedding(weights_.positions, pos);
    ops::add_(x, p);
  }
  return x;
}

Tensor Model::project_vocab(const Tensor& hidden, ProjectionHook* hook, Tensor* argmax) const {
  static const bool one_launch = [] {  // LOWRANK_PROJECT_ARGMAX=0: the GEMM, then argmax_rows (A/B timing)
    const char* v = std::getenv("LOWRANK_PROJECT_ARGMAX");
    return !(v && std::string_view(v) == "0");
  }();
  // The pick is made with the projection only when nothing changes the logits after it.
  const bool pick_here = one_launch && argmax && !hook && !(config_.final_softcap > 0);
  const bool one_cuda_row = one_launch && hidden.dim(0) == 1 && hidden.device().is_cuda() && hidden.dtype() == DType::BF16;
  // f32 logits on every device: the loss and sampling need their precision.
  Tensor y;
  if (pick_here || one_cuda_row) {
    Tensor ids = pick_here ? *argmax : Tensor::empty({hidden.dim(0)}, DType::I32, hidden.device());
    y = ops::project_argmax(hidden, weights_.lm_head, ids);
  } else {
    y = Tensor::empty({hidden.dim(0), weights_.lm_head.dim(0)}, DType::F32, hidden.device());
    ops::matmul_nt(hidden, weights_.lm_head, y);
  }
  if (hook) hook->on_projection(static_cast<int>(config_.num_layers), Target::LmHead, lm_head_linear(), hidden, y);
  if (config_.final_softcap > 0) ops::softcap_(y, static_cast<float>(config_.final_softcap));  // after the lm_head LoRA
  if (argmax && !pick_here) {
    const Tensor ids = ops::argmax_rows(y);
    device_copy(argmax->raw(), argmax->device(), ids.raw(), ids.device(), ids.numel() * sizeof(int32_t));
  }
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
