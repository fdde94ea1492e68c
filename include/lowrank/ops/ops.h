#pragma once
// Backend-neutral tensor operations used by the model, LoRA and training code. Activations are
// 2-D [rows, features], row-major. Today every op runs on the CPU backend (f32, OpenMP + BLAS);
// the CUDA backend plugs in behind the same declarations.
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::ops {

// y[M,N] = alpha * x[M,K] · w[N,K]ᵀ + beta * y   (y must exist when beta != 0)
void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y[M,N] = alpha * x[M,K] · w[K,N] + beta * y
void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y[M,N] = alpha * x[K,M]ᵀ · w[K,N] + beta * y   (weight gradients: dW = dyᵀ x)
void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y = x · wᵀ + b, a new [M, N] tensor (b may be undefined)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);

Tensor transpose2d(const Tensor& x);  // any dtype, CPU
void add_(Tensor& y, const Tensor& x);               // y += x
void add_scaled_(Tensor& y, const Tensor& x, float s);  // y += s * x
void add_bias_(Tensor& y, const Tensor& b);          // y[i, :] += b

// Gathers rows of `table` [V, d] for ids (each checked against V): [n, d].
Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids);

// RMSNorm over the last dim (size of w): y = x / sqrt(mean(x²) + eps) * w; rstd [rows] saved.
Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd = nullptr);
// LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * w + b.
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean = nullptr,
                 Tensor* rstd = nullptr);

// Rotates x [n, heads*head_dim] in place (HF rotate_half convention) for token positions pos[n],
// with cos/sin tables [P, head_dim/2].
void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse = false);

struct AttentionShape {
  int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // sliding window (0 = full causal)
  float scale = 0;     // usually 1/sqrt(head_dim)
};
// Causal attention with GQA. q [B*T, H*hd], k/v [B*T, KV*hd] -> out [B*T, H*hd];
// lse [B, H, T] (log-sum-exp of each softmax row) is saved when non-null (for backward).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse = nullptr);

enum class Act { SiLU, GeluTanh, GeluErf, ReLU };
Tensor activation(const Tensor& x, Act a);
// silu(g) * u  (SwiGLU)
Tensor swiglu(const Tensor& g, const Tensor& u);

// Cross-entropy of logits [n, V] against targets[n] (-100 = ignored): the sum of -log p(target)
// over counted rows, in double; `count` gets the number of counted rows.
double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t* count);

}  // namespace lowrank::ops

// ---- Backward ops (each the exact gradient of the forward op above) ----
namespace lowrank::ops {

// dx of RMSNorm given dy, the input x, weight w and saved rstd; adds Σ dy⊙x̂ into dw if defined.
Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw);
// dx of LayerNorm; accumulates dw and db when given.
Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db);
// dq, dk, dv of attention() given dout and the forward's q, k, v, out and lse.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv);
// dx of activation(x); dg and du of swiglu(g, u).
Tensor activation_backward(const Tensor& dy, const Tensor& x, Act a);
void swiglu_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);
// Column sums of dy [n, m] added into db [m].
void bias_grad_(Tensor& db, const Tensor& dy);
// Scatter-adds rows of dy [n, d] into table_grad [V, d] at ids.
void embedding_backward_(Tensor& table_grad, const std::vector<int32_t>& ids, const Tensor& dy);
// For logits [n, V] and targets (-100 ignored): adds `scale` * d(sum NLL)/dlogits into dlogits
// [n, V] (softmax - onehot; zero rows for ignored targets) and returns the NLL sum.
double cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets, float scale,
                              Tensor& dlogits);

}  // namespace lowrank::ops
