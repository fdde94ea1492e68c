#pragma once
// The CUDA backend: every op of lowrank/ops/ops.h for tensors on cuda:N, f32 or bf16 (fp32
// accumulation and statistics), with the same signatures and semantics; lowrank::ops dispatches
// here for CUDA tensors. Only present in builds with LOWRANK_WITH_CUDA (docs/cuda.md).
#include <cstdint>
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::cuda {

using ops::Act;
using ops::AdamWScalars;
using ops::AttentionShape;

// Forward ops
void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha = 1.0f, float beta = 0.0f);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b);
Tensor transpose2d(const Tensor& x);
void add_(Tensor& y, const Tensor& x);
void add_scaled_(Tensor& y, const Tensor& x, float s);
void add_bias_(Tensor& y, const Tensor& b);
Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids);
Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd = nullptr);
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean = nullptr,
                 Tensor* rstd = nullptr);
void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse = false);
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse = nullptr);
Tensor activation(const Tensor& x, Act a);
Tensor swiglu(const Tensor& g, const Tensor& u);
double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t* count);

// Backward ops
Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw);
Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv);
Tensor activation_backward(const Tensor& dy, const Tensor& x, Act a);
void swiglu_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);
void bias_grad_(Tensor& db, const Tensor& dy);
void embedding_backward_(Tensor& table_grad, const std::vector<int32_t>& ids, const Tensor& dy);
double cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets, float scale,
                              Tensor& dlogits);

// Device-resident variants and training ops
Tensor cast(const Tensor& x, DType dtype);
void cast_into_(Tensor& out, const Tensor& x);
void fill_(Tensor& x, float value);
void scale_(Tensor& x, float s);
void mul_(Tensor& y, const Tensor& x);
void softcap_(Tensor& x, float cap);
void softcap_backward_(Tensor& dy, const Tensor& y, float cap);
void copy_columns_(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width);
Tensor embedding(const Tensor& table, const Tensor& ids);
void embedding_backward_(Tensor& table_grad, const Tensor& ids, const Tensor& dy);
void rope_(Tensor& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin, bool inverse = false);
void cross_entropy_chunk(const Tensor& logits, const Tensor& targets, float scale, Tensor& dlogits,
                         Tensor& loss_sum);
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask);
void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p);
void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s);
void sum_squares_(const Tensor& x, Tensor& acc);
void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm);
void zero_all_(const std::vector<Tensor>& xs);
void sum_squares_all_(const std::vector<Tensor>& xs, Tensor& acc);
void clip_by_total_all_(const std::vector<Tensor>& xs, const Tensor& total_sumsq, double max_norm);
void adamw_update_all_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                       const std::vector<uint8_t>& decay, const AdamWScalars& s,
                       const std::vector<Tensor>& working = {});

// Which attention kernels run (for tests and benchmarks; Auto is the default): Auto takes cuDNN's
// fused SDPA where it is loadable and applies (bf16, head_dim a multiple of 8 up to 128; docs/cuda.md),
// else the tensor-core kernels where they apply (bf16, head_dim 64 or 128), else the generic ones.
// Cudnn forces cuDNN (an Error where it is unavailable or rejects the shape); Generic and
// TensorCore force our own kernels.
enum class AttentionPath { Auto, Generic, TensorCore, Cudnn };
void set_attention_path(AttentionPath p);

// Whether cuDNN's fused attention can be used in this process (libcudnn.so.9 loaded, not disabled
// by LOWRANK_CUDNN=0); when not, `why` (if given) says why. Loads the library on first call.
bool cudnn_attention_available(std::string* why = nullptr);
// The loaded cuDNN version (e.g. 91900), 0 when not loaded.
int cudnn_version();

// Paged KV cache (ops.h)
void paged_kv_write_(Tensor& k_pool, Tensor& v_pool, const Tensor& k, const Tensor& v, const Tensor& slots);
Tensor paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                       const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s);
std::vector<int32_t> argmax_rows(const Tensor& x);

}  // namespace lowrank::cuda
