#pragma once
// Backend-neutral tensor operations used by the model, LoRA and training code. Activations are
// 2-D [rows, features], row-major. Each op runs on the device of its tensors (all on one device):
//   cpu     the reference backend, f32 only (OpenMP + BLAS)         src/backend/cpu
//   cuda:N  f32 or bf16 tensors, f32 accumulation and statistics     src/backend/cuda
// A cuda tensor in a build without the CUDA backend, or tensors on two devices, is an Error.
// CUDA dtype rules (docs/cuda.md): outputs an op creates take the dtype of its main input; f32
// statistics (lse, rstd, mean, losses) stay f32; a GEMM whose inputs differ in dtype rounds the
// f32 one to a bf16 copy first (as torch.autocast does for LoRA's f32 A/B against bf16 activations).
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::ops {

// y[M,N] = alpha * x[M,K] · w[N,K]ᵀ + beta * y   (y must exist when beta != 0)
// When beta == 0 an existing y of the right shape is written in place (keeping its dtype);
// otherwise a new one is made.
void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y[M,N] = alpha * x[M,K] · w[K,N] + beta * y
void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y[M,N] = alpha * x[K,M]ᵀ · w[K,N] + beta * y   (weight gradients: dW = dyᵀ x)
void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
// y = x · wᵀ + b, a new [M, N] tensor (b may be undefined)
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);

Tensor transpose2d(const Tensor& x);  // any 2- or 4-byte dtype
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
// with cos/sin tables [P, rotary_dim/2]: the first rotary_dim dims of each head turn, the rest
// pass through (partial rotary).
void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse = false);

// Causal attention with GQA. q [B*T, H*hd], k/v [B*T, KV*hd] -> out [B*T, H*hd];
// lse [B, H, T] (log-sum-exp of each softmax row) is saved when non-null (for backward).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse = nullptr);

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

// ---- Device-resident variants and training ops (no host round trip inside a step) ----
namespace lowrank::ops {

// x converted to `dtype` (F32, BF16, F16) on its device; x itself when it already has it.
Tensor cast(const Tensor& x, DType dtype);
// out = x converted to out's dtype (same numel and device): refreshing a bf16 working copy of an
// f32 master weight in place.
void cast_into_(Tensor& out, const Tensor& x);
void fill_(Tensor& x, float value);  // any device, float dtypes
void scale_(Tensor& x, float s);     // x *= s
void mul_(Tensor& y, const Tensor& x);  // y *= x, element-wise (same numel)
// Logit soft-capping (Gemma): x = cap · tanh(x / cap) in place; and its backward from the capped
// output y: dy *= 1 - (y / cap)².
void softcap_(Tensor& x, float cap);
void softcap_backward_(Tensor& dy, const Tensor& y, float cap);
// dst[:, dst_col : dst_col + width] = src[:, src_col : src_col + width] for 2-D tensors with the
// same rows and dtype (any 2- or 4-byte dtype): splitting fused projections (GPT-2's c_attn,
// gate_up) and writing their gradients back.
void copy_columns_(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width);

// The same ops with ids / positions as an I32 tensor [n] on the op's device. The CUDA backend
// does not read ids back to check them: an id outside [0, V) gives a zero row (validate tokens
// when batching); the CPU backend throws as the vector versions do.
Tensor embedding(const Tensor& table, const Tensor& ids);
void embedding_backward_(Tensor& table_grad, const Tensor& ids, const Tensor& dy);
void rope_(Tensor& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin, bool inverse = false);

// Fused cross-entropy forward + backward for one chunk of rows (the caller chunks the tokens so
// that [tokens × vocab] is never materialised): logits [n, V], targets I32 [n] (-100 ignored).
// Writes dlogits = scale * (softmax - onehot) (zero rows for ignored targets); dlogits may be
// `logits` itself (in place) or undefined/wrong-shaped (then a new tensor of logits' dtype).
// Adds the chunk's NLL sum (f32 math per row) into loss_sum, an F64 [1] tensor on the device.
void cross_entropy_chunk(const Tensor& logits, const Tensor& targets, float scale, Tensor& dlogits,
                         Tensor& loss_sum);

// LoRA dropout with the CPU Rng's draws: element k (row-major) uses draw number offset + k of
// Rng(seed): keep = uniform() < k with k = float(1 - p). Returns x_drop = keep ? x / k : 0 and fills mask
// (U8 [numel], 1 = kept). The caller advances its Rng by x.numel() draws.
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask);
// dx[k] += mask[k] ? gx[k] / k : 0 with k = float(1 - p)   (the backward of dropout(), accumulated)
void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p);

// AdamW on f32 param/grad/moments (same device), torch's element formula (op_types.h).
void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s);
// acc (F64 [1], same device) += Σ x², reduced in a fixed order (reproducible run to run).
void sum_squares_(const Tensor& x, Tensor& acc);
// torch's clip_grad_norm_ rule with the total on the device: coef = max_norm / (sqrt(total_sumsq)
// + 1e-6); when total is finite and coef < 1, x *= float(coef). total_sumsq is F64 [1].
void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm);

// Multi-tensor forms of the training ops for a list of f32 tensors on one device: the same results
// as the per-tensor ops above (AdamW bit for bit; sums in another fixed order), in one launch each
// on the GPU instead of one per tensor (the CPU runs the per-tensor ops in list order). Tensors are
// handles: the ops write through them. decay[i] = 0: tensor i gets no weight decay. working[i],
// when given and defined, is a BF16 copy of params[i] that AdamW rounds the updated values into
// (the copy the GPU computes with), in the same pass.
void zero_all_(const std::vector<Tensor>& xs);
void sum_squares_all_(const std::vector<Tensor>& xs, Tensor& acc);
void clip_by_total_all_(const std::vector<Tensor>& xs, const Tensor& total_sumsq, double max_norm);
void adamw_update_all_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                       const std::vector<uint8_t>& decay, const AdamWScalars& s,
                       const std::vector<Tensor>& working = {});

}  // namespace lowrank::ops

// ---- Paged KV cache (KV-cached decoding of many sequences; vLLM's layout) ----
namespace lowrank::ops {

// A layer's keys and values live in pools [num_blocks * block_size, KV*hd] shared by every
// sequence; position p of sequence b is pool row block_tables[b, p / block_size] * block_size +
// p % block_size (block_tables I32 [B, max_blocks]).
//
// Writes rows of k, v [n, KV*hd] (post-RoPE) into the pool rows `slots` (I32 [n]); every slot must
// lie inside the pools (the CPU checks; CUDA trusts the caller, like the id-tensor ops).
void paged_kv_write_(Tensor& k_pool, Tensor& v_pool, const Tensor& k, const Tensor& v, const Tensor& slots);
// Decode attention, one query per sequence: q [B, H*hd] row b sits at position lens[b] - 1 of
// sequence b and attends to its cached positions [0, lens[b]) (s.window, s.scale, s.softcap and
// GQA as attention(); s.batch and s.seq are unused) -> [B, H*hd]. lens I32 [B] >= 1; max_len >=
// every lens[b] (the CUDA launch is sized by it without reading lens back).
Tensor paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                       const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s);
// Index of the largest element of each row of f32 x [n, V], the first one on ties (what
// std::max_element picks: greedy sampling), to the host: greedy decoding without copying logits.
std::vector<int32_t> argmax_rows(const Tensor& x);

}  // namespace lowrank::ops
