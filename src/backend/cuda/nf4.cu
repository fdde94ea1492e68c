// NF4 → bf16 (or f32) dequantization of a quantized projection's weight, into a temporary just
// before its GEMM (QLoRA's compute path: no resident dense copy of the weights). Format:
// lowrank/model/nf4.h; the CPU loop in src/backend/cpu/nf4.cpp is the reference, and the results
// agree bit for bit: the same f32 products (__fmul_rn / __fadd_rn: no FMA contraction), one
// rounding to bf16.
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/backend/nf4_code.h"

namespace lowrank::cuda {
namespace {

constexpr int64_t kBlock = 64, kAbsmaxBlock = 256;
__constant__ float kNf4Code[16] = {LOWRANK_NF4_CODE_BOOK};

struct Nf4Args {
  const uint8_t* codes;         // [(n + 1) / 2]
  const uint8_t* absmax_codes;  // [blocks]
  const float* absmax_scale;    // [ceil(blocks / 256)]
  const float* absmax_map;      // [256]
  float offset;
  int64_t n;
};

// The absmax of 64-block b: an 8-bit code scaled by its 256-block's absmax, plus the mean.
__device__ __forceinline__ float block_absmax(const Nf4Args& a, int64_t b) {
  return __fadd_rn(__fmul_rn(__ldg(&a.absmax_map[a.absmax_codes[b]]), __ldg(&a.absmax_scale[b / kAbsmaxBlock])),
                   a.offset);
}

__device__ __forceinline__ void load_code_book(float* table) {
  if (threadIdx.x < 16) table[threadIdx.x] = kNf4Code[threadIdx.x];  // shared: 16 lanes, 16 banks
  __syncthreads();
}

// Any n: one byte (two elements) per thread.
template <typename T>
__global__ void nf4_dequantize_kernel(Nf4Args a, T* __restrict__ out) {
  __shared__ float table[16];
  load_code_book(table);
  const int64_t bytes = (a.n + 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < bytes; i += int64_t(gridDim.x) * blockDim.x) {
    const uint8_t byte = a.codes[i];
    const float absmax = block_absmax(a, 2 * i / kBlock);
    out[2 * i] = from_f32<T>(__fmul_rn(table[byte >> 4], absmax));
    if (2 * i + 1 < a.n) out[2 * i + 1] = from_f32<T>(__fmul_rn(table[byte & 0x0F], absmax));
  }
}

// n % 8 == 0 (every projection of real models): 4 bytes in, 8 values out per thread, 16- or
// 32-byte stores. The 8 values lie in one 64-block.
__global__ void nf4_dequantize8_bf16_kernel(Nf4Args a, uint4* __restrict__ out) {
  __shared__ float table[16];
  load_code_book(table);
  const int64_t groups = a.n / 8;
  const uint32_t* words = reinterpret_cast<const uint32_t*>(a.codes);
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t w = words[g];
    const float absmax = block_absmax(a, 8 * g / kBlock);
    uint32_t packed[4];
    for (int k = 0; k < 4; ++k) {  // byte k (little-endian) holds elements 2k (high nibble), 2k + 1
      const uint32_t byte = (w >> (8 * k)) & 0xFFu;
      const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(table[byte >> 4], absmax)));
      const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(__fmul_rn(table[byte & 0x0F], absmax)));
      packed[k] = hi | (lo << 16);  // element 2k at the lower address
    }
    out[g] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
  }
}

}  // namespace

void nf4_dequantize(const Tensor& codes, const Tensor& absmax_codes, const Tensor& absmax_scale,
                    const Tensor& absmax_map, float offset, Tensor& out) {
  check_arg(out, "nf4_dequantize", "out");
  for (const Tensor* t : {&codes, &absmax_codes, &absmax_scale, &absmax_map})
    check_arg(*t, "nf4_dequantize", "state", true);
  const int64_t n = out.numel();  // the state was checked against `out` by the dispatch (src/ops/nf4.cpp)
  if (n == 0) return;
  const Nf4Args a{codes.data<uint8_t>(), absmax_codes.data<uint8_t>(), absmax_scale.data<float>(),
                  absmax_map.data<float>(), offset, n};
  cudaStream_t st = stream_for(out.device());
  const bool aligned = reinterpret_cast<uintptr_t>(codes.raw()) % 4 == 0 && reinterpret_cast<uintptr_t>(out.raw()) % 16 == 0;
  if (out.dtype() == DType::BF16 && n % 8 == 0 && aligned) {
    nf4_dequantize8_bf16_kernel<<<grid_for(n / 8, 256), 256, 0, st>>>(a, static_cast<uint4*>(out.raw()));
  } else {
    LR_FLOAT_TYPES(out.dtype(), T,
                   nf4_dequantize_kernel<T><<<grid_for((n + 1) / 2, 256), 256, 0, st>>>(a, out.data<T>()));
  }
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
