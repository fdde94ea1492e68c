// Dispatch of the training ops: LoRA dropout, AdamW, grad-norm sums and clipping.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask) {
  const Device d = detail::op_device("dropout", {&x});
  LR_DISPATCH(d, dropout(x, p, seed, offset, mask));
}

void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p) {
  const Device d = detail::op_device("dropout_backward_add_", {&dx, &gx, &mask});
  LR_DISPATCH(d, dropout_backward_add_(dx, gx, mask, p));
}

void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s) {
  const Device d = detail::op_device("adamw_update_", {&param, &grad, &exp_avg, &exp_avg_sq});
  LR_DISPATCH(d, adamw_update_(param, grad, exp_avg, exp_avg_sq, s));
}

void sum_squares_(const Tensor& x, Tensor& acc) {
  const Device d = detail::op_device("sum_squares_", {&x, &acc});
  LR_DISPATCH(d, sum_squares_(x, acc));
}

void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm) {
  const Device d = detail::op_device("clip_by_total_", {&x, &total_sumsq});
  LR_DISPATCH(d, clip_by_total_(x, total_sumsq, max_norm));
}

}  // namespace lowrank::ops
