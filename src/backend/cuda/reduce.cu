// Column sums (bias and norm-weight gradients), sums and sums of squares (loss, grad norm), and
// the grad-norm clip. Two passes with fixed partial layouts: deterministic, no atomics.
#include <cmath>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "reduce.h"

namespace lowrank::cuda {
namespace {

constexpr int kColTile = 32, kRowThreads = 8;

// Block (32, 8): 32 columns, rows [chunk*rows_per_chunk, ...) of one chunk (blockIdx.y).
// add_into: out[c] += sum (single chunk); else out[chunk, c] = sum (partials).
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ src, int64_t rows, int64_t cols, int64_t rows_per_chunk,
                                  float* __restrict__ out, bool add_into) {
  __shared__ float part[kRowThreads][kColTile + 1];
  const int64_t c = int64_t(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float s = 0.0f;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowThreads) s += to_f32(src[r * cols + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.0f;
    for (int i = 0; i < kRowThreads; ++i) t += part[i][threadIdx.x];
    if (add_into) out[c] += t;
    else out[int64_t(blockIdx.y) * cols + c] = t;
  }
}

template <typename T>
__global__ void partial_sum_kernel(const T* __restrict__ x, int64_t n, bool squares, double* __restrict__ partial) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = to_f32(x[i]);
    s += squares ? v * v : v;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) t += scratch[w];
    partial[blockIdx.x] = t;
  }
}

__global__ void finish_sum_kernel(const double* __restrict__ partial, int blocks, double* __restrict__ acc) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double t = 0.0;
    for (int b = 0; b < blocks; ++b) t += partial[b];
    *acc += t;
  }
}

template <typename T>
__global__ void clip_kernel(T* __restrict__ x, int64_t n, const double* __restrict__ total_sumsq, double max_norm) {
  const double total = sqrt(*total_sumsq);
  if (!isfinite(total)) return;
  const double coef = max_norm / (total + 1e-6);  // torch's clip_coef
  if (!(coef < 1.0)) return;
  const float c = static_cast<float>(coef);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(to_f32(x[i]) * c);
}

double* scalar_f64(const Tensor& t, const char* op) {
  check_arg(t, op, "accumulator", true);
  LR_CHECK(t.dtype() == DType::F64 && t.numel() == 1, op, ": accumulator must be F64 [1], got ", t.str());
  return t.data<double>();
}

}  // namespace

void column_sum_add(const void* src, DType dtype, int64_t rows, int64_t cols, float* dst, Device d) {
  if (rows == 0 || cols == 0) return;
  cudaStream_t st = stream_for(d);
  const int64_t col_blocks = (cols + kColTile - 1) / kColTile;
  // Enough chunks of rows to fill the GPU twice over, each at least 64 rows.
  const int64_t want = (2 * multiprocessor_count(d) + col_blocks - 1) / col_blocks;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({want, (rows + 63) / 64, 65535}));
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  const dim3 block(kColTile, kRowThreads);
  if (chunks == 1) {
    LR_FLOAT_TYPES(dtype, T, column_sum_kernel<<<dim3(unsigned(col_blocks), 1), block, 0, st>>>(
        static_cast<const T*>(src), rows, cols, rows, dst, true));
    LR_CUDA_LAUNCHED();
    return;
  }
  Tensor partial = Tensor::empty({chunks, cols}, DType::F32, d);
  LR_FLOAT_TYPES(dtype, T, column_sum_kernel<<<dim3(unsigned(col_blocks), unsigned(chunks)), block, 0, st>>>(
      static_cast<const T*>(src), rows, cols, per_chunk, partial.data<float>(), false));
  LR_CUDA_LAUNCHED();
  column_sum_kernel<<<dim3(unsigned(col_blocks), 1), block, 0, st>>>(partial.data<float>(), chunks, cols, chunks,
                                                                     dst, true);
  LR_CUDA_LAUNCHED();
}

void sum_to_f64(const void* x, DType dtype, int64_t n, bool squares, double* acc, Device d) {
  if (n == 0) return;
  cudaStream_t st = stream_for(d);
  const int blocks = static_cast<int>(std::min<int64_t>(1024, (n + 1023) / 1024));  // depends on n only
  Tensor partial = Tensor::empty({blocks}, DType::F64, d);
  LR_FLOAT_TYPES(dtype, T, partial_sum_kernel<<<blocks, 256, 0, st>>>(static_cast<const T*>(x), n, squares,
                                                                     partial.data<double>()));
  LR_CUDA_LAUNCHED();
  finish_sum_kernel<<<1, 32, 0, st>>>(partial.data<double>(), blocks, acc);
  LR_CUDA_LAUNCHED();
}

void bias_grad_(Tensor& db, const Tensor& dy) {
  check_arg(db, "bias_grad_", "db");
  check_arg(dy, "bias_grad_", "dy");
  LR_CHECK(db.dtype() == DType::F32, "bias_grad_: db must be F32, got ", db.str());
  const int64_t m = dy.dim(-1), n = m == 0 ? 0 : dy.numel() / m;
  LR_CHECK(db.numel() == m, "bias_grad_ ", db.str(), " for ", dy.str());
  column_sum_add(dy.raw(), dy.dtype(), n, m, db.data<float>(), dy.device());
}

void sum_squares_(const Tensor& x, Tensor& acc) {
  check_arg(x, "sum_squares_", "x");
  sum_to_f64(x.raw(), x.dtype(), x.numel(), true, scalar_f64(acc, "sum_squares_"), x.device());
}

void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm) {
  check_arg(x, "clip_by_total_", "x");
  const double* total = scalar_f64(total_sumsq, "clip_by_total_");
  if (x.numel() == 0) return;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T, clip_kernel<<<grid_for(x.numel(), 256, 4096), 256, 0, st>>>(x.data<T>(), x.numel(),
                                                                                           total, max_norm));
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
