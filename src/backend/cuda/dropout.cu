// LoRA dropout: element k is stream position offset + k of the dropout draws (lowrank/backend/
// philox.h: a 16-bit half of a Philox word each, eight a block), as the CPU's, so the masks are
// equal; the counter-based generator needs no sequential pass.
#include <type_traits>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/backend/philox.h"

namespace lowrank::cuda {
namespace {

// Eight elements a thread when the stream position of element 0 starts a Philox block and the
// data allows 16-byte accesses (bf16, n % 8 == 0, aligned: `vec`): one block, one 16-byte load and
// store, one 8-byte mask store. Otherwise one thread per Philox block, element by element. The
// offset may come from the device (a replay's delta), so the choice is made here.
template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, uint8_t* __restrict__ mask, int64_t n,
                               float keep, uint32_t below, uint64_t seed, uint64_t offset,
                               const int64_t* __restrict__ delta, bool vec) {
  if (delta) offset += static_cast<uint64_t>(*delta);  // a graph replay's position of the Rng
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  if constexpr (std::is_same_v<T, bf16>) {
    if (vec && offset % 8 == 0) {
      for (uint64_t t = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; t < static_cast<uint64_t>(n) / 8; t += stride) {
        const uint32_t kept = dropout_block_kept(seed, offset / 8 + t, below);
        const uint4 xv = reinterpret_cast<const uint4*>(x)[t];
        const bf16* xs = reinterpret_cast<const bf16*>(&xv);
        uint4 ov;
        bf16* os = reinterpret_cast<bf16*>(&ov);
        uint8_t m[8];
#pragma unroll
        for (int w = 0; w < 8; ++w) {
          m[w] = kept >> w & 1u;
          os[w] = from_f32<bf16>(m[w] ? to_f32(xs[w]) / keep : 0.0f);
        }
        reinterpret_cast<uint4*>(out)[t] = ov;
        if (mask) reinterpret_cast<uint2*>(mask)[t] = *reinterpret_cast<const uint2*>(m);
      }
      return;
    }
  }
  const uint64_t first = offset / 8, blocks = (offset + static_cast<uint64_t>(n) - 1) / 8 - first + 1;
  for (uint64_t bi = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; bi < blocks; bi += stride) {
    const uint32_t kept = dropout_block_kept(seed, first + bi, below);
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      const uint64_t pos = 8 * (first + bi) + w;  // stream position
      if (pos < offset || pos - offset >= static_cast<uint64_t>(n)) continue;
      const int64_t i = static_cast<int64_t>(pos - offset);
      const bool k = kept >> w & 1u;
      if (mask) mask[i] = k;
      out[i] = from_f32<T>(k ? to_f32(x[i]) / keep : 0.0f);
    }
  }
}

}  // namespace

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, Tensor* mask, const Tensor& device_offset) {
  check_arg(x, "dropout", "x");
  if (device_offset.defined()) check_arg(device_offset, "dropout", "device_offset", true);
  LR_CHECK(p >= 0.0f && p < 1.0f, "dropout p ", p);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (mask) *mask = Tensor::empty({x.numel()}, DType::U8, x.device());
  if (x.numel() == 0) return out;
  cudaStream_t st = stream_for(x.device());
  auto aligned = [](const void* q, size_t to) { return reinterpret_cast<uintptr_t>(q) % to == 0; };
  const bool vec = x.dtype() == DType::BF16 && x.numel() % 8 == 0 && aligned(x.raw(), 16) && aligned(out.raw(), 16) &&
                   (!mask || aligned(mask->raw(), 8));
  LR_FLOAT_TYPES(x.dtype(), T,
      dropout_kernel<<<grid_for(x.numel() / 8 + 2, 256), 256, 0, st>>>(
          x.data<T>(), out.data<T>(), mask ? mask->data<uint8_t>() : nullptr, x.numel(), static_cast<float>(1.0 - p),
          dropout_below(static_cast<float>(1.0 - p)), seed, offset,
          device_offset.defined() ? device_offset.data<int64_t>() : nullptr, vec));
  LR_CUDA_LAUNCHED();
  return out;
}

}  // namespace lowrank::cuda
