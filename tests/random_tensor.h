#pragma once
// A random test tensor: f32 on the CPU, every element uniform in [-1, 1) from Rng(seed).
#include <cstdint>

#include "lowrank/core/rng.h"
#include "lowrank/core/tensor.h"

namespace lowrank::test {

inline Tensor random_tensor(const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.uniform(-1.0f, 1.0f);
  return t;
}

}  // namespace lowrank::test
