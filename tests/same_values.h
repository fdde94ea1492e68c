#pragma once
// Whether two tensors hold the same shape and, read as f32, bit-for-bit the same values.
#include "lowrank/core/tensor.h"

namespace lowrank::test {

inline bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const Tensor x = a.to(DType::F32), y = b.to(DType::F32);
  for (int64_t i = 0; i < x.numel(); ++i)
    if (x.f32()[i] != y.f32()[i]) return false;
  return true;
}

}  // namespace lowrank::test
