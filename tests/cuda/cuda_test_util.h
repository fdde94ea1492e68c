#pragma once
// Helpers of the CUDA op tests: every CUDA op is compared with the CPU op on the same random
// inputs. Tolerance policy (docs/cuda.md): relative Frobenius error ||got - ref|| / ||ref||
//   f32 data:  <= 1e-5  (f32 kernels, f32 cuBLASLt without TF32)
//   bf16 data: <= 1e-2  (inputs are rounded to bf16 first and the CPU gets the same rounded values,
//                        so the error is the bf16 rounding of outputs and intermediates)
// Exact ops (casts, gathers, dropout masks, AdamW) are compared bit for bit.
// Allocations are poisoned (NaN) while a test runs, so an unwritten output element fails.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/core/tensor.h"

namespace lowrank::test {

constexpr double kTolF32 = 1e-5;
constexpr double kTolBf16 = 1e-2;
inline double tol_for(DType t) { return t == DType::BF16 ? kTolBf16 : kTolF32; }

inline Device gpu() { return Device::cuda(0); }

// Skips the test on machines without a GPU; turns allocation poisoning on for the test.
#define LR_REQUIRE_GPU()                                            \
  do {                                                              \
    if (::lowrank::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU"; \
    ::lowrank::cuda::set_poison_allocations(true);                  \
  } while (0)

// f32 CPU tensor of uniform values in [-amp, amp] (fresh per call: the seed varies).
inline Tensor random_cpu(const Shape& shape, uint64_t seed, float amp = 1.0f) {
  Tensor t = Tensor::empty(shape);
  Rng rng(seed * 7919 + 17);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.uniform(-amp, amp);
  return t;
}

// The values a tensor of `dtype` can hold: f32 data rounded through dtype (CPU, f32 result).
inline Tensor rounded(const Tensor& cpu_f32, DType dtype) {
  return dtype == DType::F32 ? cpu_f32 : cpu_f32.to(dtype).to(DType::F32);
}
// Copy of a CPU f32 tensor on the GPU in `dtype`.
inline Tensor to_gpu(const Tensor& cpu_f32, DType dtype) { return cpu_f32.to(dtype).to(gpu()); }
// CPU f32 copy of a GPU (or CPU) tensor of any float dtype.
inline Tensor to_host(const Tensor& t) { return t.to(Device::cpu()).to(DType::F32); }

// ||got - ref||_F / ||ref||_F in double; NaN if got has a NaN (so EXPECT_LE fails).
inline double rel_err(const Tensor& got, const Tensor& ref) {
  Tensor g = to_host(got), r = to_host(ref);
  EXPECT_EQ(g.numel(), r.numel());
  double num = 0, den = 0;
  for (int64_t i = 0; i < std::min(g.numel(), r.numel()); ++i) {
    const double d = static_cast<double>(g.f32()[i]) - r.f32()[i];
    num += d * d;
    den += static_cast<double>(r.f32()[i]) * r.f32()[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

// ||t||_F in double.
inline double frob(const Tensor& t) {
  Tensor h = to_host(t);
  double s = 0;
  for (int64_t i = 0; i < h.numel(); ++i) s += static_cast<double>(h.f32()[i]) * h.f32()[i];
  return std::sqrt(s);
}
// ||got - ref|| / max(||ref||, floor): for results that can be exactly zero in theory (then the
// reference holds only rounding noise, and a relative error says nothing), measured against the
// size `floor` of a comparable quantity instead.
inline double rel_err_floor(const Tensor& got, const Tensor& ref, double floor) {
  const double r = frob(ref);
  return rel_err(got, ref) * (r == 0 ? 1.0 : r) / std::max(r, floor);
}

inline std::vector<DType> float_types() { return {DType::F32, DType::BF16}; }
inline const char* name(DType t) { return t == DType::F32 ? "f32" : "bf16"; }

}  // namespace lowrank::test
#endif
