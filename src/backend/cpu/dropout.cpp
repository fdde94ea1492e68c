// LoRA dropout on the CPU, the CUDA kernels' draws bit for bit (lowrank/backend/philox.h: a
// 16-bit half of a Philox word an element). Philox runs over many blocks at once (philox_blocks.h:
// vectorised, rng.h's words bit for bit). One Philox call per 4 elements, scalar, made the dropout
// ~3 ns an element on this project's 2-core machine — a quarter of a 7M all-linear LoRA step's
// LoRA time.
#include <algorithm>
#include <array>
#include <bit>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/dropout_run.h"
#include "backend/cpu/philox_blocks.h"
#include "backend/cpu/target_clones.h"
#include "lowrank/backend/philox.h"

namespace lowrank::cpu {
namespace {

constexpr int64_t kBlocks = 1024;  // Philox blocks (4 words, 8 draws each) drawn per pass

// Element i keeps src[i] / keep when its 16-bit draw is below `below` (philox.h's rule).
LOWRANK_CPU_CLONES void drop(const uint16_t* __restrict halves, const float* __restrict src, float* __restrict dst,
                             uint8_t* __restrict mask, int64_t n, uint32_t below, float keep) {
  for (int64_t i = 0; i < n; ++i) {
    const bool kept = halves[i] < below;
    mask[i] = kept;
    dst[i] = kept ? src[i] / keep : 0.0f;
  }
}

}  // namespace

void dropout_run(uint64_t seed, uint64_t offset, const float* src, float* dst, uint8_t* mask, int64_t n,
                 float keep) {
  if (n <= 0) return;
  // Element k takes stream position offset + k: 16-bit half (offset + k) % 8 of Philox block
  // (offset + k) / 8 (philox.h). A block's words in memory, read as 16-bit halves, are its eight
  // draws in order (little-endian, low half first). Passes of kBlocks blocks.
  static_assert(std::endian::native == std::endian::little, "the draws are read as the words' halves");
  std::array<uint32_t, 4 * kBlocks> words;
  const auto* halves = reinterpret_cast<const uint16_t*>(words.data());
  const uint32_t below = dropout_below(keep);
  const uint64_t end_pos = offset + static_cast<uint64_t>(n);
  const auto first = static_cast<int64_t>(offset / 8), end = static_cast<int64_t>((end_pos - 1) / 8 + 1);
  for (int64_t b = first; b < end; b += kBlocks) {
    const int64_t count = std::min(kBlocks, end - b);
    philox_blocks(seed, static_cast<uint64_t>(b), count, words.data());
    const uint64_t p0 = std::max(offset, static_cast<uint64_t>(b) * 8);  // this pass's positions in range
    const uint64_t p1 = std::min(end_pos, static_cast<uint64_t>(b + count) * 8);
    const uint64_t k0 = p0 - offset;
    drop(halves + (p0 - static_cast<uint64_t>(b) * 8), src + k0, dst + k0, mask + k0, static_cast<int64_t>(p1 - p0),
         below, keep);
  }
}

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
  // One pass of kBlocks Philox blocks an iteration (the first and last partly), in parallel.
  const int64_t n = x.numel(), run = 8 * kBlocks, lead = static_cast<int64_t>(offset % 8);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t j = 0; j < (n + lead + run - 1) / run; ++j) {
    const int64_t k0 = std::max<int64_t>(0, j * run - lead), k1 = std::min(n, (j + 1) * run - lead);
    dropout_run(seed, offset + static_cast<uint64_t>(k0), src + k0, dst + k0, m + k0, k1 - k0, keep);
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
