// LoRA's shrink through its dropout on CUDA: the composition the LoRA hook ran before the op
// existed (dropout, then the GEMMs; dropout's backward on the product), launch for launch, so the
// GPU's results and roundings do not change. (The CPU fuses them: src/backend/cpu/dropout_shrink.cpp.)
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {

void dropout_shrink(const Tensor& x, const DropoutDraws& d, const Tensor& A, Tensor& h) {
  matmul_nt(dropout(x, d.p, d.seed, d.offset, nullptr, d.device_offset), A, h);
}

void dropout_shrink_backward(const Tensor& x, const DropoutDraws& d, const Tensor& g, const Tensor& A, Tensor& dA,
                             float alpha, Tensor* dx, bool accumulate) {
  Tensor mask;  // only for an accumulated dx: a written one draws the mask again
  const Tensor x_drop = dropout(x, d.p, d.seed, d.offset, dx && accumulate ? &mask : nullptr, d.device_offset);
  matmul_tn(g, x_drop, dA, alpha, 1.0f);
  if (!dx) return;
  Tensor gx;
  matmul_nn(g, A, gx, alpha, 0.0f);
  if (accumulate) dropout_backward_add_(*dx, gx, mask, d.p);
  else *dx = dropout(gx, d.p, d.seed, d.offset, nullptr, d.device_offset);
}

}  // namespace lowrank::cuda
