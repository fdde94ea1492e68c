#pragma once
// Internal entry points of the attention kernels (attention.cu: generic CUDA-core path).
#include "lowrank/backend/cuda/cuda_ops.h"

namespace lowrank::cuda {

void check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s);
Tensor attention_generic(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse);
void attention_backward_generic(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& out, const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk,
                                Tensor& dv);

}  // namespace lowrank::cuda
