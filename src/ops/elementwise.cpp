// Dispatch of element-wise ops, activations, casts and bias sums.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor transpose2d(const Tensor& x) {
  const Device d = detail::op_device("transpose2d", {&x});
  LR_DISPATCH(d, transpose2d(x));
}

void add_(Tensor& y, const Tensor& x) {
  const Device d = detail::op_device("add_", {&y, &x});
  LR_DISPATCH(d, add_(y, x));
}

void add_scaled_(Tensor& y, const Tensor& x, float s) {
  const Device d = detail::op_device("add_scaled_", {&y, &x});
  LR_DISPATCH(d, add_scaled_(y, x, s));
}

void add_bias_(Tensor& y, const Tensor& b) {
  const Device d = detail::op_device("add_bias_", {&y, &b});
  LR_DISPATCH(d, add_bias_(y, b));
}

Tensor activation(const Tensor& x, Act a) {
  const Device d = detail::op_device("activation", {&x});
  LR_DISPATCH(d, activation(x, a));
}

Tensor swiglu(const Tensor& g, const Tensor& u) {
  const Device d = detail::op_device("swiglu", {&g, &u});
  LR_DISPATCH(d, swiglu(g, u));
}

Tensor activation_backward(const Tensor& dy, const Tensor& x, Act a) {
  const Device d = detail::op_device("activation_backward", {&dy, &x});
  LR_DISPATCH(d, activation_backward(dy, x, a));
}

void swiglu_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  const Device d = detail::op_device("swiglu_backward", {&dy, &g, &u});
  LR_DISPATCH(d, swiglu_backward(dy, g, u, dg, du));
}

void bias_grad_(Tensor& db, const Tensor& dy) {
  const Device d = detail::op_device("bias_grad_", {&db, &dy});
  LR_DISPATCH(d, bias_grad_(db, dy));
}

Tensor cast(const Tensor& x, DType dtype) {
  const Device d = detail::op_device("cast", {&x});
  LR_DISPATCH(d, cast(x, dtype));
}

void cast_into_(Tensor& out, const Tensor& x) {
  const Device d = detail::op_device("cast_into_", {&out, &x});
  LR_DISPATCH(d, cast_into_(out, x));
}

void fill_(Tensor& x, float value) {
  const Device d = detail::op_device("fill_", {&x});
  LR_DISPATCH(d, fill_(x, value));
}

void scale_(Tensor& x, float s) {
  const Device d = detail::op_device("scale_", {&x});
  LR_DISPATCH(d, scale_(x, s));
}

void softcap_(Tensor& x, float cap) {
  const Device d = detail::op_device("softcap_", {&x});
  LR_DISPATCH(d, softcap_(x, cap));
}

void softcap_backward_(Tensor& dy, const Tensor& y, float cap) {
  const Device d = detail::op_device("softcap_backward_", {&dy, &y});
  LR_DISPATCH(d, softcap_backward_(dy, y, cap));
}

void mul_(Tensor& y, const Tensor& x) {
  const Device d = detail::op_device("mul_", {&y, &x});
  LR_DISPATCH(d, mul_(y, x));
}

void copy_columns_(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  const Device d = detail::op_device("copy_columns_", {&dst, &src});
  LR_DISPATCH(d, copy_columns_(dst, dst_col, src, src_col, width));
}

}  // namespace lowrank::ops
