#include "lowrank/model/backward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "lowrank/core/error.h"
#include "lowrank/model/activation.h"
#include "lowrank/model/norm.h"
#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"
#include "lowrank/ops/side_work.h"

namespace lowrank::model {
namespace {

// One projection's part in a backward: its frozen linear, the gradient of its output, and where its
// --full gradients go (null: none).
struct ProjectionGrad {
  const Linear* l;
  const Tensor* dy;  // [N, out]
  Linear* g;
};

// Gradient through projections that read the same x (q, k, v; gate, up; or one alone), each
// y = x Wᵀ + b (+ hook): returns dx = Σ dy W (+ the hook's input gradients), accumulating dW, db
// into g when given. The hook goes first: what it writes into dx (LoRA's s·g A) is then read by
// the frozen GEMMs' epilogues (beta = 1, f32 accumulation), which also sum the projections'
// input gradients: no pass of its own over dx. With `need_dx` false (nothing below uses it) only
// the parameter gradients are computed.
// An x wider than the projections' input (the hook's extended input) gives, through the hook, a dx
// just as wide: its first columns are the input gradient (the norm's backward reads them).
Tensor inputs_backward(std::initializer_list<ProjectionGrad> projections, int layer, const Tensor& x,
                       TrainableHook* hook, bool need_dx = true) {
  Tensor dx;
  bool holds = false;
  if (hook && need_dx && std::none_of(projections.begin(), projections.end(), [](const ProjectionGrad& p) { return p.g; })) {
    std::vector<std::pair<Target, const Tensor*>> dys;
    for (const ProjectionGrad& p : projections) dys.emplace_back(p.l->target, p.dy);
    if (Tensor wide = hook->extended_inputs_backward(layer, x, dys); wide.defined()) return wide;
  }
  if (hook)
    for (const ProjectionGrad& p : projections)
      holds = hook->on_projection_backward(layer, p.l->target, *p.l, x, *p.dy, need_dx ? &dx : nullptr, holds) || holds;
  for (const ProjectionGrad& p : projections) {
    if (need_dx) ops::matmul_nn(*p.dy, p.l->compute_weight(), dx, 1.0f, holds ? 1.0f : 0.0f);
    holds = true;
    if (p.g) {
      LR_CHECK(x.dim(1) == p.g->weight.dim(1), "--full gradient of ", p.l->name, " from an extended input");
      ops::matmul_tn(*p.dy, x, p.g->weight, 1.0f, 1.0f);
      if (p.g->bias.defined()) ops::bias_grad_(p.g->bias, *p.dy);
    }
  }
  return dx;
}

// [a | b] column-concatenation of two [N, *] gradients: the gradient of a fused projection's output.
Tensor concat_columns(std::initializer_list<const Tensor*> parts) {
  int64_t width = 0;
  for (const Tensor* p : parts) width += p->dim(1);
  const Tensor& first = **parts.begin();
  Tensor out = Tensor::empty({first.dim(0), width}, first.dtype(), first.device());
  int64_t col = 0;
  for (const Tensor* p : parts) {
    ops::copy_columns_(out, col, *p, 0, p->dim(1));
    col += p->dim(1);
  }
  return out;
}

// The hook's buffer for the gradient of (layer, target)'s output where it keeps LoRA's g beside it
// (TrainableHook::extended_output_grad; o and down: lora/k_extension.h), which the norm backward
// that makes the gradient writes into; undefined where the model's norms cannot write it there.
Tensor extended_grad(const ModelConfig& c, TrainableHook* hook, int layer, Target target, const Tensor& like) {
  if (!hook || layer < 0 || c.sandwich_norms || c.norm == NormKind::Layer) return Tensor();
  return hook->extended_output_grad(layer, target, like);
}

// Gradients are f32 whatever the weights' dtype (bf16 weights on the GPU): they accumulate.
Tensor f32_zeros(const Tensor& like) { return Tensor::zeros(like.shape(), DType::F32, like.device()); }

Linear zeros_like(const Linear& l) {
  Linear g;
  if (!l.defined()) return g;
  g.name = l.name;
  g.target = l.target;
  LR_CHECK(!l.quantized(), l.name, ": a quantized weight has no gradient (--full needs an unquantized model)");
  g.weight = f32_zeros(l.weight);
  if (l.bias.defined()) g.bias = f32_zeros(l.bias);
  return g;
}

Norm zeros_like(const Norm& n) {
  Norm g;
  g.name = n.name;
  if (n.weight.defined()) g.weight = f32_zeros(n.weight);
  if (n.bias.defined()) g.bias = f32_zeros(n.bias);
  return g;
}

}  // namespace

ModelWeights zeros_like(const ModelWeights& w) {
  ModelWeights g;
  g.embed_name = w.embed_name;
  g.lm_head_name = w.lm_head_name;
  g.embed = f32_zeros(w.embed);
  if (w.positions.defined()) g.positions = f32_zeros(w.positions);
  g.lm_head = w.lm_head_name == w.embed_name ? g.embed : f32_zeros(w.lm_head);
  g.final_norm = zeros_like(w.final_norm);
  for (const auto& l : w.layers) {
    LayerWeights gl;
    gl.attn_norm = zeros_like(l.attn_norm);
    gl.mlp_norm = zeros_like(l.mlp_norm);
    gl.post_attn_norm = zeros_like(l.post_attn_norm);
    gl.post_mlp_norm = zeros_like(l.post_mlp_norm);
    gl.q_norm = zeros_like(l.q_norm);
    gl.k_norm = zeros_like(l.k_norm);
    gl.q = zeros_like(l.q);
    gl.k = zeros_like(l.k);
    gl.v = zeros_like(l.v);
    gl.qkv = zeros_like(l.qkv);
    gl.o = zeros_like(l.o);
    gl.gate = zeros_like(l.gate);
    gl.up = zeros_like(l.up);
    gl.gate_up = zeros_like(l.gate_up);
    gl.down = zeros_like(l.down);
    g.layers.push_back(std::move(gl));
  }
  return g;
}

std::vector<int32_t> shift_labels(const std::vector<int32_t>& labels, int64_t batch, int64_t seq) {
  LR_CHECK(static_cast<int64_t>(labels.size()) == batch * seq, labels.size(), " labels for ", batch, "x", seq);
  std::vector<int32_t> t(labels.size(), -100);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i + 1 < seq; ++i) t[b * seq + i] = labels[b * seq + i + 1];
  return t;
}

// The loss and d(hidden) [N, d]: the vocabulary projection and the fused cross-entropy in chunks
// of rows, so that [N, V] logits never exist at once. Logits are in the hidden states' dtype (bf16
// on the GPU, as transformers computes them; the cross-entropy's math is f32), the gradient is
// written over them in place, and the NLL is summed on the device: no host round trip.
Tensor loss_backward(const Model& model, const Tensor& hidden, const std::vector<int32_t>& targets, float grad_scale,
                     TrainableHook* hook, ModelWeights* full, Tensor* loss_sum, LossResult& result,
                     const DeviceTargets* device_targets) {
  const profile::Scope scope(profile::Category::Loss, /*sticky=*/true);
  const ModelWeights& w = model.weights();
  const int64_t N = hidden.dim(0), V = w.lm_head.dim(0);
  const float cap = static_cast<float>(model.config().final_softcap);
  const Device dev = hidden.device();
  Tensor nll = loss_sum ? *loss_sum : Tensor::zeros({1}, DType::F64, dev);
  LR_CHECK(nll.dtype() == DType::F64 && nll.numel() == 1 && nll.device() == dev, "loss accumulator ", nll.str());
  const Tensor targets_dev = device_targets ? device_targets->targets : Tensor::from_ints(targets, dev);
  const Tensor device_scale = device_targets ? device_targets->grad_scale : Tensor();
  LR_CHECK(targets_dev.numel() == N, targets_dev.str(), " targets for ", N, " rows");
  Tensor dhidden = Tensor::zeros_like(hidden);  // [N, d]
  // ~256 MiB of logits per chunk (a multiple of 128 rows when that fits): big enough for the
  // lm_head GEMM to run at full rate, small next to the activations.
  int64_t chunk = std::max<int64_t>(1, (int64_t{256} << 20) / (V * dtype_size(hidden.dtype())));
  if (chunk >= 128) chunk = chunk / 128 * 128;
  chunk = std::min(chunk, std::max<int64_t>(N, 1));
  Tensor logits;
  for (int64_t r = 0; r < N; r += chunk) {
    const int64_t end = std::min(N, r + chunk);
    int64_t counted = 0;
    for (int64_t i = r; i < end; ++i) {
      if (targets[i] == -100) continue;
      // Checked here: the device kernel cannot report a bad target.
      if (targets[i] < 0 || targets[i] >= V)
        throw error("target id ", targets[i], " (row ", i, ") is outside the vocabulary of ", V);
      ++counted;
    }
    if (counted == 0 && !device_targets) continue;
    result.tokens += counted;
    const Tensor h = hidden.slice_rows(r, end);
    if (!logits.defined() || logits.dim(0) != end - r)
      logits = Tensor::empty({end - r, V}, hidden.dtype(), dev);
    ops::matmul_nt(h, w.lm_head, logits);
    const int head = static_cast<int>(model.config().num_layers);  // lm_head LoRA, chunk by chunk
    if (hook) hook->on_projection(head, Target::LmHead, model.lm_head_linear(), h, logits);
    Tensor capped;  // soft-capped logits (after the lm_head LoRA, as the forward), kept for the backward
    if (cap > 0) {
      ops::softcap_(logits, cap);
      capped = logits.clone();
    }
    ops::cross_entropy_chunk(logits, targets_dev.slice_rows(r, end), grad_scale, logits, nll, device_scale);
    if (cap > 0) ops::softcap_backward_(logits, capped, cap);
    Tensor dh = dhidden.slice_rows(r, end);
    ops::matmul_nn(logits, w.lm_head, dh);
    if (hook) hook->on_projection_backward(head, Target::LmHead, model.lm_head_linear(), h, logits, &dh, true);
    if (full) ops::matmul_tn(logits, h, full->lm_head, 1.0f, 1.0f);
    else if (Tensor* g = hook ? hook->saved_module_grad(Target::LmHead) : nullptr) ops::matmul_tn(logits, h, *g, 1.0f, 1.0f);
  }
  if (!loss_sum) result.nll_sum = nll.to(Device::cpu()).data<double>()[0];
  return dhidden;
}

Tensor layer_backward(const Model& model, int64_t li, LayerActivations& saved, Tensor dx, int64_t B, int64_t T,
                      const Tensor& pos_dev, TrainableHook* hook, LayerWeights* G, bool need_dx, bool checkpointing) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t N = B * T;
  const LayerWeights& L = w.layers[li];
  if (checkpointing) {  // recompute this layer's activations from its saved input
    LayerActivations full_a;
    if (hook) hook->set_replay(true);
    model.layer_forward(li, saved.x_in,
                        LayerInput{.batch = B, .seq = T, .pos = &pos_dev, .hook = hook, .save_lse = true, .kept = &saved},
                        full_a);
    if (hook) hook->set_replay(false);
    saved = std::move(full_a);
  }
  const LayerActivations& a = saved;
  const int layer = static_cast<int>(li);
  auto grad_of = [&](Linear LayerWeights::*slot) { return G ? &(G->*slot) : nullptr; };
  auto norm_grad_of = [&](Norm LayerWeights::*slot) { return G ? &(G->*slot) : nullptr; };
  // MLP block: x_out = x_mid + [post_norm](down(act(gate) * up))   (ungated: down(act(up)))
  Tensor dmlp_out = dx;
  if (c.sandwich_norms)
    dmlp_out = normalize_backward(c.norm, L.post_mlp_norm, norm_grad_of(&LayerWeights::post_mlp_norm), dx,
                                  a.down_out, Tensor(), a.post_mlp_rstd);
  // A gradient wider than the hidden size is the hook's buffer (extended_grad): its backward there.
  const int64_t d = c.hidden_size;
  Tensor dact = dmlp_out.dim(1) > d
                    ? hook->extended_output_backward(layer, L.down.target, L.down, a.act, dmlp_out)
                    : inputs_backward({{&L.down, &dmlp_out, grad_of(&LayerWeights::down)}}, layer, a.act, hook);
  Tensor dxn2;
  if (!c.gated_mlp) {
    Tensor dup = ops::activation_backward(dact, a.up, op_activation(c.activation));
    dxn2 = inputs_backward({{&L.up, &dup, grad_of(&LayerWeights::up)}}, layer, a.xn2, hook);
  } else {
    Tensor dg, du;
    if (c.activation == Activation::SiLU) {
      ops::swiglu_backward(dact, a.gate, a.up, dg, du);
    } else {  // act(gate) * up
      du = ops::activation(a.gate, op_activation(c.activation));
      ops::mul_(du, dact);  // du = dact ⊙ act(gate)
      Tensor dactg = dact.clone();
      ops::mul_(dactg, a.up);
      dg = ops::activation_backward(dactg, a.gate, op_activation(c.activation));
    }
    if (c.fused_gate_up) {
      const Tensor dgu = concat_columns({&dg, &du});
      dxn2 = inputs_backward({{&L.gate_up, &dgu, grad_of(&LayerWeights::gate_up)}}, layer, a.xn2, hook);
    } else {
      dxn2 = inputs_backward({{&L.gate, &dg, grad_of(&LayerWeights::gate)}, {&L.up, &du, grad_of(&LayerWeights::up)}},
                             layer, a.xn2, hook);
    }
  }
  const Tensor o_ext = G ? Tensor() : extended_grad(c, hook, layer, L.o.target, a.x_mid);
  Tensor dx_mid = normalize_backward(c.norm, L.mlp_norm, norm_grad_of(&LayerWeights::mlp_norm), dxn2, a.x_mid,
                                     a.norm2_mean, a.norm2_rstd, &dx, o_ext.defined() ? &o_ext : nullptr);
  // Attention block: x_mid = x_in + [post_norm](o(attn(q, k, v)))
  Tensor dattn_out = dx_mid;
  if (c.sandwich_norms)
    dattn_out = normalize_backward(c.norm, L.post_attn_norm, norm_grad_of(&LayerWeights::post_attn_norm), dx_mid,
                                   a.o_out, Tensor(), a.post_attn_rstd);
  Tensor dattn = dattn_out.dim(1) > d
                     ? hook->extended_output_backward(layer, L.o.target, L.o, a.attn, dattn_out)
                     : inputs_backward({{&L.o, &dattn_out, grad_of(&LayerWeights::o)}}, layer, a.attn, hook);
  const ops::AttentionShape shape{B, T, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window[li],
                                  c.attention_scale(), static_cast<float>(c.attn_softcap)};
  // q, k, v side by side (the hook's stacked product): dq, dk, dv side by side too, the hook's
  // frozen input gradients one GEMM over them.
  const bool pack = a.qkv.defined();
  Tensor dq, dk, dv, dqkv;
  if (pack) ops::attention_backward_packed(dattn, a.qkv, a.attn, a.lse, shape, dqkv);
  else ops::attention_backward(dattn, a.q, a.k, a.v, a.attn, a.lse, shape, dq, dk, dv);
  if (!c.learned_positions) {
    const RopeTables& tables = model.rope(li, T);
    if (pack) {  // q's heads, then k's: one block of the packed gradient
      ops::rope_columns_({dqkv, 0, c.q_dim() + c.kv_dim()}, c.num_heads + c.num_kv_heads, pos_dev, tables.cos,
                         tables.sin, /*inverse=*/true);
    } else {
      ops::rope_(dq, c.num_heads, pos_dev, tables.cos, tables.sin, /*inverse=*/true);
      ops::rope_(dk, c.num_kv_heads, pos_dev, tables.cos, tables.sin, /*inverse=*/true);
    }
  }
  if (c.qk_norm) {
    const int64_t hd = c.head_dim;
    dq = normalize_backward(c.norm, L.q_norm, norm_grad_of(&LayerWeights::q_norm), dq.reshape({N * c.num_heads, hd}),
                            a.q_raw.reshape({N * c.num_heads, hd}), Tensor(), a.q_rstd)
             .reshape({N, c.q_dim()});
    dk = normalize_backward(c.norm, L.k_norm, norm_grad_of(&LayerWeights::k_norm),
                            dk.reshape({N * c.num_kv_heads, hd}), a.k_raw.reshape({N * c.num_kv_heads, hd}),
                            Tensor(), a.k_rstd)
             .reshape({N, c.kv_dim()});
  }
  // The lowest trained layer's input gradient feeds nothing (no embedding gradient without
  // --full): its q/k/v input-grad GEMMs and the attention norm's backward are skipped.
  Tensor dxn1;
  if (pack) {  // one product over the stacked weights gives [dx | g]; at the lowest trained layer only g
    Tensor out = hook->extended_inputs_backward(
        layer, a.xn1, {{L.q.target, nullptr}, {L.k.target, nullptr}, {L.v.target, nullptr}}, &dqkv, need_dx);
    LR_CHECK(out.defined(), "layer ", layer, ": the hook took back its packed q, k, v");
    if (need_dx) dxn1 = std::move(out);
  } else if (c.fused_qkv) {
    const Tensor dqkv = concat_columns({&dq, &dk, &dv});
    dxn1 = inputs_backward({{&L.qkv, &dqkv, grad_of(&LayerWeights::qkv)}}, layer, a.xn1, hook, need_dx);
  } else {
    dxn1 = inputs_backward({{&L.q, &dq, grad_of(&LayerWeights::q)},
                            {&L.k, &dk, grad_of(&LayerWeights::k)},
                            {&L.v, &dv, grad_of(&LayerWeights::v)}},
                           layer, a.xn1, hook, need_dx);
  }
  if (need_dx) {
    const Tensor down_ext = G ? Tensor() : extended_grad(c, hook, layer - 1, Target::Down, a.x_in);
    dx = normalize_backward(c.norm, L.attn_norm, norm_grad_of(&LayerWeights::attn_norm), dxn1, a.x_in,
                            a.norm1_mean, a.norm1_rstd, &dx_mid, down_ext.defined() ? &down_ext : nullptr);
  } else {
    dx = Tensor();
  }
  if (checkpointing) saved = LayerActivations{};  // free the recomputed activations
  return dx;
}

void embedding_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& pos, Tensor& dx,
                        TrainableHook* hook, ModelWeights* full, const Tensor& pos_dev) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  // x = (embed[ids] + embedding LoRA) · scale + positions[pos]
  const bool embedding_lora = !full && hook && hook->lowest_trainable_layer() < 0;
  if (full && full->positions.defined()) {
    if (pos_dev.defined()) ops::embedding_backward_(full->positions, pos_dev, dx);
    else ops::embedding_backward_(full->positions, pos, dx);
  }
  if (c.scale_embeddings && (full || embedding_lora)) ops::scale_(dx, c.embedding_scale(w.embed.dtype()));
  if (embedding_lora) hook->on_embedding_backward(batch.ids, dx);
  Tensor* embed_grad = full ? &full->embed : hook ? hook->saved_module_grad(Target::Embed) : nullptr;
  if (embed_grad && batch.device_ids.defined()) ops::embedding_backward_(*embed_grad, batch.device_ids, dx);
  else if (embed_grad) ops::embedding_backward_(*embed_grad, batch.ids, dx);
}

LossResult forward_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& targets,
                            float grad_scale, TrainableHook* hook, ModelWeights* full, bool checkpointing,
                            Tensor* loss_sum, const DeviceTargets* device_targets,
                            const LayerGradientsDone* layer_done) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  ForwardCache cache;
  cache.checkpointing = checkpointing;
  // The hook's saved activations live in this pass's cache (unbound when the pass ends).
  struct Binding {
    TrainableHook* hook;
    ~Binding() {
      if (hook) hook->bind(nullptr);
    }
  } binding{hook};
  if (hook) hook->bind(&cache);
  if (hook && checkpointing) hook->set_checkpointed_forward(true);
  model.hidden_states(batch, hook, &cache);
  if (hook && checkpointing) hook->set_checkpointed_forward(false);

  LossResult result;
  Tensor dhidden =
      loss_backward(model, cache.hidden, targets, grad_scale, hook, full, loss_sum, result, device_targets);
  const Tensor top_ext =
      full ? Tensor() : extended_grad(c, hook, static_cast<int>(c.num_layers) - 1, Target::Down, cache.x_final);
  Tensor dx = normalize_backward(c.norm, w.final_norm, full ? &full->final_norm : nullptr, dhidden, cache.x_final,
                                 cache.final_mean, cache.final_rstd, nullptr, top_ext.defined() ? &top_ext : nullptr);
  const int lowest = full ? 0 : (hook ? hook->lowest_trainable_layer() : static_cast<int>(c.num_layers));
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(i % T);
  // Once for every layer's RoPE, unless the caller already has them on the device.
  const Tensor pos_dev = batch.device_pos.defined() ? batch.device_pos : Tensor::from_ints(pos, model.device());

  std::vector<Device> devices;  // the layers' (a pipeline split has several)
  for (int64_t li = c.num_layers - 1; li >= std::max(lowest, 0); --li) {
    const Device dev = model.layer_device(li);
    if (std::find(devices.begin(), devices.end(), dev) == devices.end()) devices.push_back(dev);
    const uint64_t layer_start = ops::side_work_mark(dev);
    dx = layer_backward(model, li, cache.layers[li], dx, B, T, pos_dev, hook, full ? &full->layers[li] : nullptr,
                        full || li > lowest, checkpointing);
    // The hook's side work (LoRA's weight gradients, ops/side_work.h) joins one layer late, so that
    // this layer's last part overlaps the next layer's start; its memory is held until then.
    // A caller that reads the layer's gradients now (data parallel's sums) gets all of it.
    ops::join_side_work(dev, layer_done ? UINT64_MAX : layer_start);
    if (layer_done) (*layer_done)(li);
  }
  if (full || (hook && lowest < 0)) embedding_backward(model, batch, pos, dx, hook, full, batch.device_pos);
  for (Device dev : devices) ops::join_side_work(dev);  // every gradient complete on the main streams
  return result;
}

}  // namespace lowrank::model
