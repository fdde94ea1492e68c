// LoRA dropout: element k uses word offset + k of the Philox stream, as the CPU Rng's row-major
// draws do, so the masks are equal; the counter-based generator needs no sequential pass.
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/backend/philox.h"

namespace lowrank::cuda {
namespace {

// One thread per Philox block: its 4 words are stream positions 4B..4B+3, i.e. elements
// k = 4B + w - offset (a quarter of the Philox work of one draw per element).
template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, uint8_t* __restrict__ mask, int64_t n,
                               float keep, uint64_t seed, uint64_t offset, const int64_t* __restrict__ delta) {
  if (delta) offset += static_cast<uint64_t>(*delta);  // a graph replay's position of the Rng
  const uint64_t first = offset / 4, blocks = (offset + static_cast<uint64_t>(n) - 1) / 4 - first + 1;
  for (uint64_t bi = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; bi < blocks;
       bi += uint64_t(gridDim.x) * blockDim.x) {
    const PhiloxBlock r = philox4x32_10(seed, 0, first + bi);
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint64_t pos = 4 * (first + bi) + w;  // stream position
      if (pos < offset || pos - offset >= static_cast<uint64_t>(n)) continue;
      const int64_t i = static_cast<int64_t>(pos - offset);
      const bool k = static_cast<float>(r.w[w] >> 8) * (1.0f / 16777216.0f) < keep;
      mask[i] = k;
      out[i] = from_f32<T>(k ? to_f32(x[i]) / keep : 0.0f);
    }
  }
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask, const Tensor& device_offset) {
  check_arg(x, "dropout", "x");
  if (device_offset.defined()) check_arg(device_offset, "dropout", "device_offset", true);
  LR_CHECK(p >= 0.0f && p < 1.0f, "dropout p ", p);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  mask = Tensor::empty({x.numel()}, DType::U8, x.device());
  if (x.numel() == 0) return out;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T,
      dropout_kernel<<<grid_for(x.numel() / 4 + 2, 256), 256, 0, st>>>(x.data<T>(), out.data<T>(), mask.data<uint8_t>(),
                                                               x.numel(), static_cast<float>(1.0 - p), seed, offset,
                                                               device_offset.defined() ? device_offset.data<int64_t>() : nullptr));
  LR_CUDA_LAUNCHED();
  return out;
}

}  // namespace lowrank::cuda
