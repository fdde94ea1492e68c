// Dtype conversion, fill, in-place scaling, 2-D transpose and column copies on the GPU.
#include <cuda_fp16.h>

#include "common.cuh"
#include "lowrank/core/device_memory.h"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

__device__ __forceinline__ float load_any(float x) { return x; }
__device__ __forceinline__ float load_any(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load_any(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T store_any(float x);
template <>
__device__ __forceinline__ float store_any<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 store_any<bf16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half store_any<__half>(float x) { return __float2half_rn(x); }

template <typename S, typename D>
__global__ void cast_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = store_any<D>(load_any(src[i]));
}

template <typename T>
__global__ void fill_kernel(T* __restrict__ dst, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

template <typename T>
__global__ void scale_kernel(T* __restrict__ x, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(to_f32(x[i]) * s);
}

// 32x32 tiles through shared memory (one padding column: no bank conflicts on the transposed read).
template <typename T>
__global__ void transpose_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t rows, int64_t cols) {
  __shared__ T tile[32][33];
  const int64_t r0 = int64_t(blockIdx.y) * 32, c0 = int64_t(blockIdx.x) * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;  // dst row c, column r
    if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][i];
  }
}

template <typename T>
__global__ void copy_columns_kernel(T* __restrict__ dst, int64_t dst_cols, int64_t dst_col, const T* __restrict__ src,
                                    int64_t src_cols, int64_t src_col, int64_t rows, int64_t width) {
  const int64_t n = rows * width;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e % width;
    dst[r * dst_cols + dst_col + c] = src[r * src_cols + src_col + c];
  }
}

template <typename S>
void cast_from(const Tensor& x, Tensor& out, cudaStream_t st) {
  const S* src = static_cast<const S*>(x.raw());
  const unsigned grid = grid_for(x.numel(), 256);
  switch (out.dtype()) {
    case DType::F32: cast_kernel<<<grid, 256, 0, st>>>(src, out.data<float>(), x.numel()); break;
    case DType::BF16: cast_kernel<<<grid, 256, 0, st>>>(src, out.data<bf16>(), x.numel()); break;
    case DType::F16: cast_kernel<<<grid, 256, 0, st>>>(src, out.data<__half>(), x.numel()); break;
    default: throw error("cast: unsupported target dtype ", dtype_name(out.dtype()));
  }
}

}  // namespace

void cast_into_(Tensor& out, const Tensor& x) {
  check_arg(x, "cast_into_", "x", true);
  check_arg(out, "cast_into_", "out", true);
  LR_CHECK(out.numel() == x.numel() && out.device() == x.device(), "cast_into_ ", x.str(), " into ", out.str());
  if (x.numel() == 0) return;
  if (x.dtype() == out.dtype()) {
    device_copy(out.raw(), out.device(), x.raw(), x.device(), x.nbytes());
    return;
  }
  cudaStream_t st = stream_for(x.device());
  switch (x.dtype()) {
    case DType::F32: cast_from<float>(x, out, st); break;
    case DType::BF16: cast_from<bf16>(x, out, st); break;
    case DType::F16: cast_from<__half>(x, out, st); break;
    default: throw error("cast: unsupported source dtype ", dtype_name(x.dtype()));
  }
  LR_CUDA_LAUNCHED();
}

Tensor cast(const Tensor& x, DType dtype) {
  check_arg(x, "cast", "x", true);
  if (x.dtype() == dtype) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  cast_into_(out, x);
  return out;
}

void fill_(Tensor& x, float value) {
  check_arg(x, "fill_", "x", true);
  if (x.numel() == 0) return;
  cudaStream_t st = stream_for(x.device());
  const unsigned grid = grid_for(x.numel(), 256);
  switch (x.dtype()) {
    case DType::F32: fill_kernel<<<grid, 256, 0, st>>>(x.data<float>(), value, x.numel()); break;
    case DType::BF16: fill_kernel<<<grid, 256, 0, st>>>(x.data<bf16>(), __float2bfloat16_rn(value), x.numel()); break;
    case DType::F16: fill_kernel<<<grid, 256, 0, st>>>(x.data<__half>(), __float2half_rn(value), x.numel()); break;
    default:
      LR_CHECK(value == 0.0f, "fill_ of ", dtype_name(x.dtype()), " with ", value);
      x.zero_();
      return;
  }
  LR_CUDA_LAUNCHED();
}

void scale_(Tensor& x, float s) {
  check_arg(x, "scale_", "x");
  if (x.numel() == 0) return;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T, scale_kernel<<<grid_for(x.numel(), 256), 256, 0, st>>>(x.data<T>(), s, x.numel()));
  LR_CUDA_LAUNCHED();
}

Tensor transpose2d(const Tensor& x) {
  check_arg(x, "transpose2d", "x", true);
  LR_CHECK(x.rank() == 2, "transpose2d of ", x.str());
  const int64_t r = x.dim(0), c = x.dim(1);
  Tensor t = Tensor::empty({c, r}, x.dtype(), x.device());
  if (x.numel() == 0) return t;
  cudaStream_t st = stream_for(x.device());
  const dim3 grid(static_cast<unsigned>((c + 31) / 32), static_cast<unsigned>((r + 31) / 32)), block(32, 8);
  LR_CHECK(grid.y <= 65535, "transpose2d: too many rows ", r);
  switch (dtype_size(x.dtype())) {
    case 2: transpose_kernel<<<grid, block, 0, st>>>(x.data<uint16_t>(), t.data<uint16_t>(), r, c); break;
    case 4: transpose_kernel<<<grid, block, 0, st>>>(x.data<uint32_t>(), t.data<uint32_t>(), r, c); break;
    default: throw error("transpose2d: unsupported dtype ", dtype_name(x.dtype()));
  }
  LR_CUDA_LAUNCHED();
  return t;
}

void copy_columns_(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  check_arg(dst, "copy_columns_", "dst", true);
  check_arg(src, "copy_columns_", "src", true);
  LR_CHECK(dst.rank() == 2 && src.rank() == 2 && dst.dim(0) == src.dim(0) && dst.dtype() == src.dtype() &&
               width >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + width <= dst.dim(1) &&
               src_col + width <= src.dim(1),
           "copy_columns_ ", dst.str(), "[:, ", dst_col, "+", width, "] <- ", src.str(), "[:, ", src_col, "]");
  const int64_t rows = dst.dim(0), n = rows * width;
  if (n == 0) return;
  LR_CHECK(dst.raw() != src.raw() || dst_col == src_col || dst_col + width <= src_col || src_col + width <= dst_col,
           "copy_columns_: overlapping column ranges within one tensor");
  cudaStream_t st = stream_for(dst.device());
  const unsigned grid = grid_for(n, 256);
  switch (dtype_size(dst.dtype())) {
    case 2:
      copy_columns_kernel<<<grid, 256, 0, st>>>(dst.data<uint16_t>(), dst.dim(1), dst_col, src.data<uint16_t>(),
                                                src.dim(1), src_col, rows, width);
      break;
    case 4:
      copy_columns_kernel<<<grid, 256, 0, st>>>(dst.data<uint32_t>(), dst.dim(1), dst_col, src.data<uint32_t>(),
                                                src.dim(1), src_col, rows, width);
      break;
    default: throw error("copy_columns_: unsupported dtype ", dtype_name(dst.dtype()));
  }
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
