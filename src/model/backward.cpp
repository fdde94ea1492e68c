#include "lowrank/model/backward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "lowrank/core/error.h"
#include "lowrank/model/activation.h"
#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"

namespace lowrank::model {
namespace {

// Gradient through y = x Wᵀ + b (+ hook): dx = dy W, or dx += dy W with `accumulate` (projections
// that read the same input: their input gradients are summed by the GEMM in f32, not by a bf16
// add afterwards); accumulates dW, db into g when given. With `need_dx` false (nothing below uses
// it) only the parameter gradients are computed.
enum class Dx { Write, Accumulate, Skip };
void linear_backward(const Linear& l, Linear* g, int layer, Target t, const Tensor& x, const Tensor& dy,
                     TrainableHook* hook, Tensor& dx, Dx mode = Dx::Write) {
  if (mode != Dx::Skip) ops::matmul_nn(dy, l.weight, dx, 1.0f, mode == Dx::Accumulate ? 1.0f : 0.0f);
  if (g) {
    ops::matmul_tn(dy, x, g->weight, 1.0f, 1.0f);
    if (g->bias.defined()) ops::bias_grad_(g->bias, dy);
  }
  Tensor none;
  if (hook) hook->on_projection_backward(layer, t, l, x, dy, mode == Dx::Skip ? none : dx);
}

Tensor linear_backward(const Linear& l, Linear* g, int layer, Target t, const Tensor& x, const Tensor& dy,
                       TrainableHook* hook) {
  Tensor dx;
  linear_backward(l, g, layer, t, x, dy, hook, dx);
  return dx;
}

Tensor norm_backward(const ModelConfig& c, const Norm& n, Norm* g, const Tensor& dy, const Tensor& x,
                     const Tensor& mean, const Tensor& rstd) {
  if (c.is_gpt2())
    return ops::layernorm_backward(dy, x, n.weight, mean, rstd, g ? &g->weight : nullptr, g ? &g->bias : nullptr);
  return ops::rmsnorm_backward(dy, x, n.weight, rstd, g ? &g->weight : nullptr);
}


// Gradients are f32 whatever the weights' dtype (bf16 weights on the GPU): they accumulate.
Tensor f32_zeros(const Tensor& like) { return Tensor::zeros(like.shape(), DType::F32, like.device()); }

Linear zeros_like(const Linear& l) {
  Linear g;
  if (!l.defined()) return g;
  g.name = l.name;
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

// The loss and d(hidden) [N, d]: the vocabulary projection and the fused cross-entropy in chunks
// of rows, so that [N, V] logits never exist at once. Logits are in the hidden states' dtype (bf16
// on the GPU, as transformers computes them; the cross-entropy's math is f32), the gradient is
// written over them in place, and the NLL is summed on the device: no host round trip.
Tensor loss_backward(const Model& model, const Tensor& hidden, const std::vector<int32_t>& targets, float grad_scale,
                     TrainableHook* hook, ModelWeights* full, Tensor* loss_sum, LossResult& result) {
  const profile::Scope scope(profile::Category::Loss, /*sticky=*/true);
  const ModelWeights& w = model.weights();
  const int64_t N = hidden.dim(0), V = w.lm_head.dim(0);
  const Device dev = hidden.device();
  Tensor nll = loss_sum ? *loss_sum : Tensor::zeros({1}, DType::F64, dev);
  LR_CHECK(nll.dtype() == DType::F64 && nll.numel() == 1 && nll.device() == dev, "loss accumulator ", nll.str());
  const Tensor targets_dev = Tensor::from_ints(targets, dev);
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
    if (counted == 0) continue;
    result.tokens += counted;
    const Tensor h = hidden.slice_rows(r, end);
    if (!logits.defined() || logits.dim(0) != end - r)
      logits = Tensor::empty({end - r, V}, hidden.dtype(), dev);
    ops::matmul_nt(h, w.lm_head, logits);
    const int head = static_cast<int>(model.config().num_layers);  // lm_head LoRA, chunk by chunk
    if (hook) hook->on_projection(head, Target::LmHead, model.lm_head_linear(), h, logits);
    ops::cross_entropy_chunk(logits, targets_dev.slice_rows(r, end), grad_scale, logits, nll);
    Tensor dh = dhidden.slice_rows(r, end);
    ops::matmul_nn(logits, w.lm_head, dh);
    if (hook) hook->on_projection_backward(head, Target::LmHead, model.lm_head_linear(), h, logits, dh);
    if (full) ops::matmul_tn(logits, h, full->lm_head, 1.0f, 1.0f);
  }
  if (!loss_sum) result.nll_sum = nll.to(Device::cpu()).data<double>()[0];
  return dhidden;
}

LossResult forward_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& targets,
                            float grad_scale, TrainableHook* hook, ModelWeights* full, bool checkpointing,
                            Tensor* loss_sum) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const int64_t B = batch.batch, T = batch.seq, N = batch.rows();
  ForwardCache cache;
  cache.checkpointing = checkpointing;
  model.hidden_states(batch, hook, &cache);

  LossResult result;
  Tensor dhidden = loss_backward(model, cache.hidden, targets, grad_scale, hook, full, loss_sum, result);
  Tensor dx = norm_backward(c, w.final_norm, full ? &full->final_norm : nullptr, dhidden, cache.x_final,
                            cache.final_mean, cache.final_rstd);
  const int lowest = full ? 0 : (hook ? hook->lowest_trainable_layer() : static_cast<int>(c.num_layers));
  std::vector<int32_t> pos(N);
  for (int64_t i = 0; i < N; ++i) pos[i] = static_cast<int32_t>(i % T);
  const Tensor pos_dev = Tensor::from_ints(pos, model.device());  // once for every layer's RoPE
  const RopeTables* tables = c.is_gpt2() ? nullptr : &model.rope(T);

  for (int64_t li = c.num_layers - 1; li >= std::max(lowest, 0); --li) {
    const LayerWeights& L = w.layers[li];
    LayerWeights* G = full ? &full->layers[li] : nullptr;
    if (checkpointing) {  // recompute this layer's activations from its saved input
      LayerActivations full_a;
      if (hook) hook->set_replay(true);
      model.layer_forward(li, cache.layers[li].x_in, LayerInput{B, T, 0, &pos_dev, hook, nullptr, true}, full_a);
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
      Tensor dup = ops::activation_backward(dact, a.up, op_activation(c.activation));
      dxn2 = linear_backward(L.up, G ? &G->up : nullptr, layer, Target::CFc, a.xn2, dup, hook);
    } else {
      dact = linear_backward(L.down, G ? &G->down : nullptr, layer, Target::Down, a.act, dx, hook);
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
      dxn2 = linear_backward(L.gate, G ? &G->gate : nullptr, layer, Target::Gate, a.xn2, dg, hook);
      linear_backward(L.up, G ? &G->up : nullptr, layer, Target::Up, a.xn2, du, hook, dxn2, Dx::Accumulate);
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
    // The lowest trained layer's input gradient feeds nothing (no embedding gradient without
    // --full): its q/k/v input-grad GEMMs and the attention norm's backward are skipped.
    const bool need_dx = full || li > lowest;
    Tensor dxn1;
    if (c.is_gpt2()) {
      const int64_t d = c.hidden_size;
      Tensor dqkv = Tensor::empty({N, 3 * d}, dq.dtype(), dq.device());
      ops::copy_columns_(dqkv, 0, dq, 0, d);
      ops::copy_columns_(dqkv, d, dk, 0, d);
      ops::copy_columns_(dqkv, 2 * d, dv, 0, d);
      linear_backward(L.qkv, G ? &G->qkv : nullptr, layer, Target::CAttn, a.xn1, dqkv, hook, dxn1,
                      need_dx ? Dx::Write : Dx::Skip);
    } else {
      ops::rope_(dq, c.num_heads, pos_dev, tables->cos, tables->sin, /*inverse=*/true);
      ops::rope_(dk, c.num_kv_heads, pos_dev, tables->cos, tables->sin, /*inverse=*/true);
      if (c.qk_norm) {
        const int64_t hd = c.head_dim;
        dq = ops::rmsnorm_backward(dq.reshape({N * c.num_heads, hd}), a.q_raw.reshape({N * c.num_heads, hd}),
                                   L.q_norm.weight, a.q_rstd, G ? &G->q_norm.weight : nullptr)
                 .reshape({N, c.q_dim()});
        dk = ops::rmsnorm_backward(dk.reshape({N * c.num_kv_heads, hd}), a.k_raw.reshape({N * c.num_kv_heads, hd}),
                                   L.k_norm.weight, a.k_rstd, G ? &G->k_norm.weight : nullptr)
                 .reshape({N, c.kv_dim()});
      }
      linear_backward(L.q, G ? &G->q : nullptr, layer, Target::Q, a.xn1, dq, hook, dxn1,
                      need_dx ? Dx::Write : Dx::Skip);
      linear_backward(L.k, G ? &G->k : nullptr, layer, Target::K, a.xn1, dk, hook, dxn1,
                      need_dx ? Dx::Accumulate : Dx::Skip);
      linear_backward(L.v, G ? &G->v : nullptr, layer, Target::V, a.xn1, dv, hook, dxn1,
                      need_dx ? Dx::Accumulate : Dx::Skip);
    }
    if (need_dx) {
      dx = norm_backward(c, L.attn_norm, G ? &G->attn_norm : nullptr, dxn1, a.x_in, a.norm1_mean, a.norm1_rstd);
      ops::add_(dx, dx_mid);
    }
    if (checkpointing) cache.layers[li] = LayerActivations{};  // free the recomputed activations
  }
  if (hook && lowest < 0) hook->on_embedding_backward(batch.ids, dx);  // embedding LoRA
  if (full) {
    ops::embedding_backward_(full->embed, batch.ids, dx);
    if (full->positions.defined()) ops::embedding_backward_(full->positions, pos, dx);
  }
  return result;
}

}  // namespace lowrank::model
