// NF4 dequantization on the CPU: the reference the CUDA kernel is tested against (bit for bit after
// its bf16 rounding). The format is described in lowrank/model/nf4.h.
#include "backend/cpu/cpu_ops.h"
#include "lowrank/backend/nf4_code.h"
#include "lowrank/core/error.h"

namespace lowrank::cpu {
namespace {

constexpr float kNf4[16] = {LOWRANK_NF4_CODE_BOOK};
constexpr int64_t kBlock = 64, kAbsmaxBlock = 256;

}  // namespace

void nf4_dequantize(const Tensor& codes, const Tensor& absmax_codes, const Tensor& absmax_scale,
                    const Tensor& absmax_map, float offset, Tensor& out) {
  const int64_t n = out.numel(), blocks = (n + kBlock - 1) / kBlock;
  // The state was checked against `out` by the dispatch (src/ops/nf4.cpp).
  LR_CHECK(out.dtype() == DType::F32 || out.dtype() == DType::BF16, "nf4_dequantize into ", out.str());
  const uint8_t* q = codes.data<uint8_t>();
  const uint8_t* qa = absmax_codes.data<uint8_t>();
  const float* scale = absmax_scale.f32();
  const float* map = absmax_map.f32();
  const bool bf16 = out.dtype() == DType::BF16;
#pragma omp parallel for if (n > 65536)
  for (int64_t b = 0; b < blocks; ++b) {
    // Two roundings, as bnb's two steps (a blockwise 8-bit dequantize, then `absmax += offset`);
    // this file is built with -ffp-contract=off so that they never fuse into one FMA.
    const float scaled = map[qa[b]] * scale[b / kAbsmaxBlock];
    const float absmax = scaled + offset;
    const int64_t end = std::min(n, (b + 1) * kBlock);
    for (int64_t i = b * kBlock; i < end; ++i) {
      const uint8_t byte = q[i / 2];
      const float v = kNf4[(i % 2 == 0) ? (byte >> 4) : (byte & 0x0F)] * absmax;
      if (bf16) out.data<uint16_t>()[i] = f32_to_bf16(v);
      else out.f32()[i] = v;
    }
  }
}

}  // namespace lowrank::cpu
