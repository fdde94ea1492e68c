#pragma once
// Internal entry points of the attention kernels: attention.cu (generic CUDA-core path, any
// head_dim <= 256, f32 or bf16) and attention_tc.cu (tensor cores, bf16, head_dim 64 or 128).
#include "lowrank/backend/cuda/cuda_ops.h"

namespace lowrank::cuda {

void check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);
Tensor attention_generic(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse);
void attention_backward_generic(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk,
                                Tensor& dv);

bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);
Tensor attention_tc(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse);

}  // namespace lowrank::cuda
