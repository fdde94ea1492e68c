// Dispatch of RMSNorm and LayerNorm, forward and backward.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd) {
  const Device d = detail::op_device("rmsnorm", {&x, &w});
  LR_DISPATCH(d, rmsnorm(x, w, eps, rstd));
}

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean, Tensor* rstd) {
  const Device d = detail::op_device("layernorm", {&x, &w, &b});
  LR_DISPATCH(d, layernorm(x, w, b, eps, mean, rstd));
}

Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw,
                        const Tensor* dres) {
  const Device d = detail::op_device("rmsnorm_backward", {&dy, &x, &w, &rstd, dw, dres});
  LR_DISPATCH(d, rmsnorm_backward(dy, x, w, rstd, dw, dres));
}

Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db, const Tensor* dres) {
  const Device d = detail::op_device("layernorm_backward", {&dy, &x, &w, &mean, &rstd, dw, db, dres});
  LR_DISPATCH(d, layernorm_backward(dy, x, w, mean, rstd, dw, db, dres));
}

}  // namespace lowrank::ops
