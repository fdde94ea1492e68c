// GEMM dispatch. The output joins the device check only when it is read (beta != 0) or reused.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  const Device d = detail::op_device("matmul_nt", {&x, &w, &y});
  LR_DISPATCH(d, matmul_nt(x, w, y, alpha, beta));
}

void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  const Device d = detail::op_device("matmul_nn", {&x, &w, &y});
  LR_DISPATCH(d, matmul_nn(x, w, y, alpha, beta));
}

void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  const Device d = detail::op_device("matmul_tn", {&x, &w, &y});
  LR_DISPATCH(d, matmul_tn(x, w, y, alpha, beta));
}

void matmul_blocks(Gemm layout, const ColumnBlock& x, const ColumnBlock& w, const ColumnBlock& y, float alpha,
                   float beta) {
  const Device d = detail::op_device("matmul_blocks", {&x.t, &w.t, &y.t});
  LR_DISPATCH(d, matmul_blocks(layout, x, w, y, alpha, beta));
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  const Device d = detail::op_device("linear", {&x, &w, &b});
  LR_DISPATCH(d, linear(x, w, b));
}

Tensor matmul_nt_add(const Tensor& x, const Tensor& w, const Tensor& c, float alpha) {
  const Device d = detail::op_device("matmul_nt_add", {&x, &w, &c});
  LR_DISPATCH(d, matmul_nt_add(x, w, c, alpha));
}

}  // namespace lowrank::ops
