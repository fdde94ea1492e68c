// LoRA dropout on the CPU, drawing from the Rng exactly as the CUDA kernel does (rng.h).
#include "backend/cpu/cpu_ops.h"
#include "lowrank/core/rng.h"

namespace lowrank::cpu {

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask) {
  LR_CHECK(p >= 0.0f && p < 1.0f, "dropout p ", p);
  const float keep = static_cast<float>(1.0 - p);  // as lora_hook computes it
  Tensor out = Tensor::empty(x.shape());
  mask = Tensor::empty({x.numel()}, DType::U8);
  const float* src = x.f32();
  float* dst = out.f32();
  uint8_t* m = mask.data<uint8_t>();
  Rng rng(seed, offset);
  for (int64_t k = 0; k < x.numel(); ++k) {
    m[k] = rng.uniform() < keep;
    dst[k] = m[k] ? src[k] / keep : 0.0f;
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
  for (int64_t k = 0; k < dx.numel(); ++k)
    if (m[k]) o[k] += g[k] / keep;
}

}  // namespace lowrank::cpu
