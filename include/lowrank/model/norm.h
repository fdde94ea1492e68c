#pragma once
// The model's norms by kind (RMSNorm, Gemma's (1 + w) RMSNorm, LayerNorm), forward and backward.
#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"
#include "lowrank/model/weights.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::model {

// Norm of each row of x [rows, size of n.weight]; saves mean (LayerNorm only) and rstd [rows].
// `into`: the output written into that block of a wider matrix, which is returned (ops::rmsnorm).
Tensor normalize(NormKind kind, float eps, const Norm& n, const Tensor& x, Tensor* mean, Tensor* rstd,
                 const ops::ColumnBlock* into = nullptr);
// dx of normalize() given dy and the forward's x, mean and rstd [+ dres, the residual stream's
// gradient, added inside the op]; accumulates the weight (and bias) gradients into g when given.
// dy may be wider than x: its first columns are read (LoRA's K-extended input gradient). RMS
// kinds only: dres may be wider too, and `into` (a wider [rows, > d]) receives dx in its first
// columns and is returned (the gradient of o's or down's output beside LoRA's g: k_extension.h).
Tensor normalize_backward(NormKind kind, const Norm& n, Norm* g, const Tensor& dy, const Tensor& x,
                          const Tensor& mean, const Tensor& rstd, const Tensor* dres = nullptr,
                          const Tensor* into = nullptr);

}  // namespace lowrank::model
