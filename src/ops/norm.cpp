// Dispatch of RMSNorm and LayerNorm, forward and backward.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd, const ColumnBlock* into) {
  const Device d = detail::op_device("rmsnorm", {&x, &w, into ? &into->t : nullptr});
  if (into) {
    const int64_t width = w.numel(), rows = width > 0 ? x.numel() / width : 0;
    LR_CHECK(into->t.defined() && into->t.rank() == 2 && into->t.dtype() == x.dtype() && into->t.dim(0) == rows &&
                 into->width == width && into->col >= 0 && into->col + width <= into->t.dim(1),
             "rmsnorm: output columns [", into->col, ", ", into->col + into->width, ") of ",
             into->t.defined() ? into->t.str() : "undefined", " for ", x.str());
  }
  LR_DISPATCH(d, rmsnorm(x, w, eps, rstd, into));
}

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean, Tensor* rstd) {
  const Device d = detail::op_device("layernorm", {&x, &w, &b});
  LR_DISPATCH(d, layernorm(x, w, b, eps, mean, rstd));
}

Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw,
                        const Tensor* dres) {
  const Device d = detail::op_device("rmsnorm_backward", {&dy, &x, &w, &rstd, dw, dres});
  if (dy.defined() && x.defined() && w.defined() && w.numel() > 0 && dy.numel() != x.numel())
    LR_CHECK(dy.rank() == 2 && dy.dim(0) == x.numel() / w.numel() && dy.dim(1) > w.numel() && dy.dtype() == x.dtype(),
             "rmsnorm_backward: dy ", dy.str(), " for x ", x.str());
  LR_DISPATCH(d, rmsnorm_backward(dy, x, w, rstd, dw, dres));
}

Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db, const Tensor* dres) {
  const Device d = detail::op_device("layernorm_backward", {&dy, &x, &w, &mean, &rstd, dw, db, dres});
  LR_DISPATCH(d, layernorm_backward(dy, x, w, mean, rstd, dw, db, dres));
}

}  // namespace lowrank::ops
