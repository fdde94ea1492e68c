// LoRA dropout on the CPU, drawing from the Rng exactly as the CUDA kernel does (rng.h).
#include <array>

#include "backend/cpu/cpu_ops.h"
#include "lowrank/core/rng.h"

namespace lowrank::cpu {

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor* mask, const Tensor& device_offset) {
  LR_CHECK(p >= 0.0f && p < 1.0f, "dropout p ", p);
  if (device_offset.defined()) offset += static_cast<uint64_t>(device_offset.data<int64_t>()[0]);
  const float keep = static_cast<float>(1.0 - p);  // as lora_hook computes it
  Tensor out = Tensor::empty(x.shape());
  Tensor own_mask;  // the draws' record, kept only when asked for
  Tensor& kept = mask ? *mask : own_mask;
  kept = Tensor::empty({x.numel()}, DType::U8);
  const float* src = x.f32();
  float* dst = out.f32();
  uint8_t* m = kept.data<uint8_t>();
  // Element k takes word offset + k of Rng(seed): lane w % 4 of Philox block w / 4, as Rng's
  // uniform() reads it. One block per 4 elements (not per element), blocks in parallel.
  const auto n = static_cast<uint64_t>(x.numel());
  if (n == 0) return out;
  const auto first = static_cast<int64_t>(offset / 4), end = static_cast<int64_t>((offset + n - 1) / 4 + 1);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t b = first; b < end; ++b) {
    const std::array<uint32_t, 4> words = philox4x32(seed, 0, static_cast<uint64_t>(b));
    for (uint64_t lane = 0; lane < 4; ++lane) {
      const uint64_t w = static_cast<uint64_t>(b) * 4 + lane;
      if (w < offset || w - offset >= n) continue;
      const uint64_t k = w - offset;
      const float u = static_cast<float>(words[lane] >> 8) * (1.0f / 16777216.0f);
      m[k] = u < keep;
      dst[k] = m[k] ? src[k] / keep : 0.0f;
    }
  }
  return out;
}

void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p) {
  LR_CHECK(dx.numel() == gx.numel() && mask.numel() == dx.numel() && mask.dtype() == DType::U8, dx.str(), " ",
           gx.str(), " ", mask.str());
  const float keep = static_cast<float>(1.0 - p);  // as lora_hook computes it
  float* o = dx.f32();
  const float* g = gx.f32();
  const uint8_t* m = mask.data<uint8_t>();
#pragma omp parallel for schedule(static) if (dx.numel() > 65536)
  for (int64_t k = 0; k < dx.numel(); ++k)
    if (m[k]) o[k] += g[k] / keep;
}

}  // namespace lowrank::cpu
