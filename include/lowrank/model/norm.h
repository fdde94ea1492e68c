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
// dy may be wider than x: its first columns are read (LoRA's K-extended input gradient).
Tensor normalize_backward(NormKind kind, const Norm& n, Norm* g, const Tensor& dy, const Tensor& x,
                          const Tensor& mean, const Tensor& rstd, const Tensor* dres = nullptr);

}  // namespace lowrank::model
