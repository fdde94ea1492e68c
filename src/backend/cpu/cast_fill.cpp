// CPU dtype conversion, fill and in-place scaling.
#include "lowrank/backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

Tensor cast(const Tensor& x, DType dtype) { return x.to(dtype); }

void fill_(Tensor& x, float value) { x.fill_(value); }

void scale_(Tensor& x, float s) {
  float* p = x.f32();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > 32768)
  for (int64_t i = 0; i < n; ++i) p[i] *= s;
}

}  // namespace lowrank::cpu
