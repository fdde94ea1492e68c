#pragma once
// Internal entry points of the attention kernels: attention.cu (generic CUDA-core path, any
// head_dim <= 256, f32 or bf16) and attention_tc.cu (tensor cores, bf16, head_dim 64 or 128).
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {

void check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);
Tensor attention_generic(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse);
// D = rowsum(dO ⊙ O) [B, H, T] f32, the backward's per-row correction.
Tensor attention_delta(const Tensor& dout, const Tensor& out, const AttentionShape& s);
// Both backward paths write into dq, dk, dv (allocated by the caller, shapes of q, k, v).
void attention_backward_generic(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& lse, const Tensor& delta, const AttentionShape& s, Tensor& dq,
                                Tensor& dk, Tensor& dv);
void attention_backward_tc(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                           const Tensor& delta, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv);

bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);
Tensor attention_tc(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse);
// The forward for shapes that vary call to call (a ShapesVary scope; attention_varying.cu): kernels
// with no per-shape plan to build; undefined when none applies (the caller goes on as usual).
Tensor attention_varying(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);

}  // namespace lowrank::cuda
