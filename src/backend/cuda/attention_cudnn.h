#pragma once
// cuDNN's fused SDPA (flash attention) as a third attention path (attention_cudnn.cu): libcudnn.so.9
// is loaded at run time, the graphs are built with cuDNN's backend API, one execution plan per
// shape is cached. Both functions return false (having queued nothing) when cuDNN is not loadable,
// is disabled (LOWRANK_CUDNN=0), does not apply to the arguments, or builds no plan for the shape;
// `why` then says why. A failure while executing a built plan throws an Error.
#include <string>

#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {

// out [B*T, H*hd] and lse [B, H, T] f32 (natural-log log-sum-exp of the scaled scores, the same
// statistic as our kernels write) are allocated here.
bool attention_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor& out,
                     Tensor& lse, std::string* why);
// dq, dk, dv are allocated by the caller (shapes of q, k, v). lse may come from any forward path.
bool attention_backward_cudnn(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk,
                              Tensor& dv, std::string* why);
// The same with q, k, v (and dq, dk, dv: dqkv, allocated by the caller) as the column blocks of one
// [B*T, (H + 2·KV)·hd] (ops::attention_packed, attention_backward_packed): row strides in cuDNN's
// tensors, no copies.
bool attention_cudnn_packed(const Tensor& qkv, const AttentionShape& s, Tensor& out, Tensor& lse, std::string* why);
bool attention_backward_cudnn_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                     const AttentionShape& s, Tensor& dqkv, std::string* why);

}  // namespace lowrank::cuda
