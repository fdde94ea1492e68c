#pragma once
// Shared helpers of the CUDA kernels: error checks, the per-device stream, typed loads/stores for
// f32 and bf16 (math is always f32), tensor argument checks and launch sizes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/error.h"
#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line);

#define LR_CUDA(call)                                                                        \
  do {                                                                                       \
    cudaError_t lr_err_ = (call);                                                            \
    if (lr_err_ != cudaSuccess) ::lowrank::cuda::throw_cuda_error(lr_err_, #call, __FILE__, __LINE__); \
  } while (0)
// After a <<<...>>> launch: reports a bad configuration at once (faults surface at the next sync).
#define LR_CUDA_LAUNCHED() LR_CUDA(cudaGetLastError())

// Makes d the current device (checking it exists) and returns its stream.
cudaStream_t stream_for(Device d);
int multiprocessor_count(Device d);

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Runs the body with T = float or bf16 for the tensor dtype (a compile-time type per branch).
#define LR_FLOAT_TYPES(dtype, T, ...)                                               \
  switch (dtype) {                                                                  \
    case ::lowrank::DType::F32: { using T = float; __VA_ARGS__; } break;           \
    case ::lowrank::DType::BF16: { using T = ::lowrank::cuda::bf16; __VA_ARGS__; } break; \
    default: throw ::lowrank::error("CUDA op: unsupported dtype ", ::lowrank::dtype_name(dtype), \
                                    " (expected F32 or BF16)");                    \
  }

// Copies host ids / positions / targets into an I32 [n] tensor on d (queued on d's stream).
Tensor upload_i32(const std::vector<int32_t>& v, Device d);

// Checks a tensor argument: defined, on a CUDA device, f32 or bf16 (any dtype when any_dtype).
void check_arg(const Tensor& t, const char* op, const char* name, bool any_dtype = false);

// Whether a pointer (a tensor's storage) allows 16-byte vector accesses.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
inline bool aligned16(const Tensor& t) { return aligned16(t.raw()); }

inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < max_blocks ? b : max_blocks);
}

// v rounded to bf16 and back: where an op stores a bf16 value that the next step reads.
__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// 16 bytes of a weight read once per step: no point keeping them in L1. (Not volatile: the
// compiler may issue the loads of an unrolled loop together.)
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The 8 bf16 of a 16-byte load as f32.
__device__ __forceinline__ void unpack8(const uint4 u, float (&f)[8]) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// Warp and block sums / maxima (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the first `warps` warps of the block, which meet at sync() (all their threads call it).
template <typename Sync>
__device__ __forceinline__ float warps_sum(float v, float* scratch, int warps, Sync sync) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  sync();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  sync();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return warps_sum(v, scratch, (blockDim.x + 31) >> 5, [] { __syncthreads(); });
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace lowrank::cuda
