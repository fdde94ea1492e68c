#include "lowrank/model/backward.h"

#include <cmath>
#include <cstring>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {
namespace {

ops::Act act_of(Activation a) {
  switch (a) {
    case Activation::SiLU: return ops::Act::SiLU;
    case Activation::GeluTanh: return ops::Act::GeluTanh;
    case Activation::GeluErf: return ops::Act::GeluErf;
    case Activation::ReLU: return ops::Act::ReLU;
  }
  return ops::Act::SiLU;
}

// Gradient through y = x Wᵀ + b (+ hook): returns dx; accumulates dW, db into g when given.
Tensor linear_backward(const Linear& l, Linear* g, int layer, Target t, const Tensor& x, const Tensor& dy,
                       TrainableHook* hook) {
  Tensor dx;
  ops::matmul_nn(dy, l.weight, dx);
  if (g) {
    ops::matmul_tn(dy, x, g->weight, 1.0f, 1.0f);
    if (g->bias.defined()) ops::bias_grad_(g->bias, dy);
  }
  if (hook) hook->on_projection_backward(layer, t, x, dy, dx);
  return dx;
}

Tensor norm_backward(const ModelConfig& c, const Norm& n, Norm* g, const Tensor& dy, const Tensor& x,
                     const Tensor& mean, const Tensor& rstd) {
  if (c.is_gpt2())
    return ops::layernorm_backward(dy, x, n.weight, mean, rstd, g ? &g->weight : nullptr, g ? &g->bias : nullptr);
  return ops::rmsnorm_backward(dy, x, n.weight, rstd, g ? &g->weight : nullptr);
}


Linear zeros_like(const Linear& l) {
  Linear g;
  if (!l.defined()) return g;
  g.name = l.name;
  g.weight = Tensor::zeros_like(l.weight);
  if (l.bias.defined()) g.bias = Tensor::zeros_like(l.bias);
  return g;
}

Norm zeros_like(const Norm& n) {
  Norm g;
  g.name = n.name;
  if (n.weight.defined()) g.weight = Tensor::zeros_like(n.weight);
  if (n.bias.defined()) g.bias = Tensor::zeros_like(n.bias);
  return g;
}

}  // namespace

ModelWeights zeros_like(const ModelWeights& w) {
  ModelWeights g;
  g.embed_name = w.embed_name;
  g.lm_head_name = w.lm_head_name;
  g.embed = Tensor::zeros_like(w.embed);
  if (w.positions.defined()) g.positions = Tensor::zeros_like(w.positions);
  g.lm_head = w.lm_head_name == w.embed_name ? g.embed : Tensor::zeros_like(w.lm_head);
  g.final_norm = zeros_like(w.final_norm);
  for (const auto& l : w.layers) {
    LayerWeights gl;
    gl.attn_norm = zeros_like(l.attn_norm);
    gl.mlp_norm = zeros_like(l.mlp_norm);
    gl.q_norm = zeros_like(l.q_norm);
    gl.k_norm = zeros_like(l.k_norm);
    gl.q = zeros_like(l.q);
    gl.k = zeros_like(l.k);
    gl.v = zeros_like(l.v);
    gl.qkv = zeros_like(l.qkv);
    gl.o = zeros_like(l.o);
    gl.gate = zeros_like(l.gate);
    gl.up = zeros_like(l.up);
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

LossResult forward_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& targets,
                            float grad_scale, TrainableHook* hook, ModelWeights* full, bool checkpointing) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  ForwardCache cache;
  cache.checkpointing = checkpointing;
  model.hidden_states(batch, hook, &cache);

  // Loss and d(hidden), chunked over rows so that [rows, V] logits stay small.
  LossResult result;
  Tensor dhidden = Tensor::zeros_like(cache.hidden);  // [N, d]
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(c.vocab_size, 1));
  for (int64_t r = 0; r < N; r += chunk) {
    const int64_t end = std::min(N, r + chunk);
    std::vector<int32_t> t(targets.begin() + r, targets.begin() + end);
    bool any = false;
    for (int32_t v : t) any = any || v != -100;
    if (!any) continue;
    Tensor h = cache.hidden.slice_rows(r, end);
    Tensor logits = model.project_vocab(h);
    Tensor dlogits = Tensor::zeros_like(logits);
    result.nll_sum += ops::cross_entropy_backward(logits, t, grad_scale, dlogits);
    for (int32_t v : t) result.tokens += v != -100;
    Tensor dh = dhidden.slice_rows(r, end);
    ops::matmul_nn(dlogits, w.lm_head, dh, 1.0f, 1.0f);
    if (full) ops::matmul_tn(dlogits, h, full->lm_head, 1.0f, 1.0f);
  }

  Tensor dx = norm_backward(c, w.final_norm, full ? &full->final_norm : nullptr, dhidden, cache.x_final,
                            cache.final_mean, cache.final_rstd);
  const int lowest = full ? 0 : (hook ? hook->lowest_trainable_layer() : static_cast<int>(c.num_layers));
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(i % T);
  const RopeTables* tables = c.is_gpt2() ? nullptr : &model.rope(T);

  for (int64_t li = c.num_layers - 1; li >= lowest; --li) {
    const LayerWeights& L = w.layers[li];
    LayerWeights* G = full ? &full->layers[li] : nullptr;
    if (checkpointing) {  // recompute this layer's activations from its saved input
      LayerActivations full_a;
      if (hook) hook->set_replay(true);
      model.layer_forward(li, cache.layers[li].x_in, LayerInput{B, T, 0, &pos, hook, nullptr, true}, full_a);
      if (hook) hook->set_replay(false);
      cache.layers[li] = std::move(full_a);
    }
    const LayerActivations& a = cache.layers[li];
    const int layer = static_cast<int>(li);
    // MLP block: x_out = x_mid + down(act(...))
    Tensor dact;
    Tensor dxn2;
    if (c.is_gpt2()) {
      dact = linear_backward(L.down, G ? &G->down : nullptr, layer, Target::MlpCProj, a.act, dx, hook);
      Tensor dup = ops::activation_backward(dact, a.up, act_of(c.activation));
      dxn2 = linear_backward(L.up, G ? &G->up : nullptr, layer, Target::CFc, a.xn2, dup, hook);
    } else {
      dact = linear_backward(L.down, G ? &G->down : nullptr, layer, Target::Down, a.act, dx, hook);
      Tensor dg, du;
      if (c.activation == Activation::SiLU) {
        ops::swiglu_backward(dact, a.gate, a.up, dg, du);
      } else {  // act(gate) * up
        du = ops::activation(a.gate, act_of(c.activation));
        ops::mul_(du, dact);  // du = dact ⊙ act(gate)
        Tensor dactg = dact.clone();
        ops::mul_(dactg, a.up);
        dg = ops::activation_backward(dactg, a.gate, act_of(c.activation));
      }
      dxn2 = linear_backward(L.gate, G ? &G->gate : nullptr, layer, Target::Gate, a.xn2, dg, hook);
      Tensor dxn2_up = linear_backward(L.up, G ? &G->up : nullptr, layer, Target::Up, a.xn2, du, hook);
      ops::add_(dxn2, dxn2_up);
    }
    Tensor dx_mid = norm_backward(c, L.mlp_norm, G ? &G->mlp_norm : nullptr, dxn2, a.x_mid, a.norm2_mean, a.norm2_rstd);
    ops::add_(dx_mid, dx);
    // Attention block: x_mid = x_in + o(attn(q, k, v))
    Tensor dattn = linear_backward(L.o, G ? &G->o : nullptr, layer, c.is_gpt2() ? Target::CProj : Target::O,
                                   a.attn, dx_mid, hook);
    ops::AttentionShape shape{B, T, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window[li],
                              static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};
    Tensor dq, dk, dv;
    ops::attention_backward(dattn, a.q, a.k, a.v, a.attn, a.lse, shape, dq, dk, dv);
    Tensor dxn1;
    if (c.is_gpt2()) {
      const int64_t d = c.hidden_size;
      Tensor dqkv = Tensor::empty({N, 3 * d}, dq.dtype(), dq.device());
      ops::copy_columns_(dqkv, 0, dq, 0, d);
      ops::copy_columns_(dqkv, d, dk, 0, d);
      ops::copy_columns_(dqkv, 2 * d, dv, 0, d);
      dxn1 = linear_backward(L.qkv, G ? &G->qkv : nullptr, layer, Target::CAttn, a.xn1, dqkv, hook);
    } else {
      ops::rope_(dq, c.num_heads, pos, tables->cos, tables->sin, /*inverse=*/true);
      ops::rope_(dk, c.num_kv_heads, pos, tables->cos, tables->sin, /*inverse=*/true);
      if (c.qk_norm) {
        const int64_t hd = c.head_dim;
        dq = ops::rmsnorm_backward(dq.reshape({N * c.num_heads, hd}), a.q_raw.reshape({N * c.num_heads, hd}),
                                   L.q_norm.weight, a.q_rstd, G ? &G->q_norm.weight : nullptr)
                 .reshape({N, c.q_dim()});
        dk = ops::rmsnorm_backward(dk.reshape({N * c.num_kv_heads, hd}), a.k_raw.reshape({N * c.num_kv_heads, hd}),
                                   L.k_norm.weight, a.k_rstd, G ? &G->k_norm.weight : nullptr)
                 .reshape({N, c.kv_dim()});
      }
      dxn1 = linear_backward(L.q, G ? &G->q : nullptr, layer, Target::Q, a.xn1, dq, hook);
      ops::add_(dxn1, linear_backward(L.k, G ? &G->k : nullptr, layer, Target::K, a.xn1, dk, hook));
      ops::add_(dxn1, linear_backward(L.v, G ? &G->v : nullptr, layer, Target::V, a.xn1, dv, hook));
    }
    dx = norm_backward(c, L.attn_norm, G ? &G->attn_norm : nullptr, dxn1, a.x_in, a.norm1_mean, a.norm1_rstd);
    ops::add_(dx, dx_mid);
    if (checkpointing) cache.layers[li] = LayerActivations{};  // free the recomputed activations
  }
  if (full) {
    ops::embedding_backward_(full->embed, batch.ids, dx);
    if (full->positions.defined()) ops::embedding_backward_(full->positions, pos, dx);
  }
  return result;
}

}  // namespace lowrank::model
