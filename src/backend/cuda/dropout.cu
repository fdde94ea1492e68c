// LoRA dropout: every element draws its own Philox word, so the mask equals the CPU Rng's
// row-major draws (element k uses stream position offset + k) and needs no sequential pass.
#include "common.cuh"
#include "lowrank/backend/cuda/cuda_ops.h"
#include "lowrank/backend/philox.h"

namespace lowrank::cuda {
namespace {

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, uint8_t* __restrict__ mask, int64_t n,
                               float keep, uint64_t seed, uint64_t offset) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const bool k = philox_uniform(seed, offset + static_cast<uint64_t>(i)) < keep;
    mask[i] = k;
    out[i] = from_f32<T>(k ? to_f32(x[i]) / keep : 0.0f);
  }
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor& mask) {
  check_arg(x, "dropout", "x");
  LR_CHECK(p >= 0.0f && p < 1.0f, "dropout p ", p);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  mask = Tensor::empty({x.numel()}, DType::U8, x.device());
  if (x.numel() == 0) return out;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T,
      dropout_kernel<<<grid_for(x.numel(), 256), 256, 0, st>>>(x.data<T>(), out.data<T>(), mask.data<uint8_t>(),
                                                               x.numel(), static_cast<float>(1.0 - p), seed, offset));
  LR_CUDA_LAUNCHED();
  return out;
}

}  // namespace lowrank::cuda
