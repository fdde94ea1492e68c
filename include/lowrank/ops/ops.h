#pragma once
// Backend-neutral tensor operations used by the model, LoRA and training code. Activations are
// 2-D [rows, features], row-major. Each op runs on the device of its tensors (all on one device):
//   cpu     the reference backend, f32 only (OpenMP + BLAS)         src/backend/cpu
//   cuda:N  f32 or bf16 tensors, f32 accumulation and statistics     src/backend/cuda
// A cuda tensor in a build without the CUDA backend, or tensors on two devices, is an Error.
// CUDA dtype rules (docs/cuda.md): outputs an op creates take the dtype of its main input; f32
// statistics (lse, rstd, mean, losses) stay f32; a GEMM whose inputs differ in dtype rounds the
// f32 one to a bf16 copy first (as torch.autocast does for LoRA's f32 A/B against bf16 activations).
// The ops themselves, with what each computes, are listed in lowrank/ops/op_list.inc.
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::ops {
#include "lowrank/ops/op_list.inc"

// dropout_shrink and its backward on whole tensors: h [N, r] (made when undefined or of another
// shape, in x's dtype); dx [N, in] added to, or written (made when undefined or of another shape).
void dropout_shrink(const Tensor& x, const DropoutDraws& d, const Tensor& A, Tensor& h);
void dropout_shrink_backward(const Tensor& x, const DropoutDraws& d, const Tensor& g, const Tensor& A, Tensor& dA,
                             float alpha, Tensor* dx, bool accumulate);
}  // namespace lowrank::ops
