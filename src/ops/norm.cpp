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

namespace {
// A gradient given as x's rows or as a wider 2-D whose first d columns are its rows (op_list.inc).
void check_rows_or_wider(const char* op, const char* name, const Tensor& t, const Tensor& x, const Tensor& w,
                         bool exact_allowed = true) {
  if (!t.defined() || !x.defined() || !w.defined() || w.numel() == 0) return;
  if (exact_allowed && t.numel() == x.numel()) return;
  LR_CHECK(t.rank() == 2 && t.dim(0) == x.numel() / w.numel() && t.dim(1) >= w.numel() && t.dtype() == x.dtype(),
           op, ": ", name, " ", t.str(), " for x ", x.str());
}
}  // namespace

Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw,
                        const Tensor* dres, const Tensor* into) {
  const Device d = detail::op_device("rmsnorm_backward", {&dy, &x, &w, &rstd, dw, dres, into});
  check_rows_or_wider("rmsnorm_backward", "dy", dy, x, w);
  if (dres) check_rows_or_wider("rmsnorm_backward", "dres", *dres, x, w);
  if (into) check_rows_or_wider("rmsnorm_backward", "into", *into, x, w, /*exact_allowed=*/false);
  LR_DISPATCH(d, rmsnorm_backward(dy, x, w, rstd, dw, dres, into));
}

Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db, const Tensor* dres) {
  const Device d = detail::op_device("layernorm_backward", {&dy, &x, &w, &mean, &rstd, dw, db, dres});
  LR_DISPATCH(d, layernorm_backward(dy, x, w, mean, rstd, dw, db, dres));
}

}  // namespace lowrank::ops
