// Dispatch of RMSNorm and LayerNorm, forward and backward.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd, const ColumnBlock* also) {
  const Device d = detail::op_device("rmsnorm", {&x, &w, also ? &also->t : nullptr});
  if (also) {
    const int64_t width = w.numel(), rows = width > 0 ? x.numel() / width : 0;
    LR_CHECK(also->t.defined() && also->t.rank() == 2 && also->t.dtype() == x.dtype() && also->t.dim(0) == rows &&
                 also->width == width && also->col >= 0 && also->col + width <= also->t.dim(1),
             "rmsnorm: second output columns [", also->col, ", ", also->col + also->width, ") of ",
             also->t.defined() ? also->t.str() : "undefined", " for ", x.str());
  }
  LR_DISPATCH(d, rmsnorm(x, w, eps, rstd, also));
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
