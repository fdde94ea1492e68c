#pragma once
// y = alpha · x wᵀ + beta · y for an f32 x [M, K] and a bf16 weight w [N, K] (Quantization::KeepBf16:
// a bf16 checkpoint's projections kept in bf16 on the CPU). The weight is read in bf16 and widened
// in registers: a decode step streams half the bytes of its f32 copy for the same values.
#include "lowrank/core/tensor.h"

namespace lowrank::cpu {

void matmul_nt_bf16(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta);

}  // namespace lowrank::cpu
