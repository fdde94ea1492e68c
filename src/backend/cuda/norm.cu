// RMSNorm and LayerNorm over the last dim, forward and backward. Statistics (mean, rstd) and all
// math in f32 whatever the storage dtype. The weight (and bias) gradients are accumulated per block
// in shared memory, written as partials [blocks, d] and summed in a fixed order (reduce.h), so they
// are deterministic.
#include <algorithm>
#include <initializer_list>

#include "common.cuh"
#include "dependent_launch.cuh"
#include "backend/cuda/cuda_ops.h"
#include "reduce.h"

namespace lowrank::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename W>
__global__ void rmsnorm_kernel(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y,
                               float* __restrict__ rstd, int64_t d, float eps, int64_t ldy) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * d;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = to_f32(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[r] = rs;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) y[r * ldy + i] = from_f32<T>(to_f32(xr[i]) * rs * to_f32(w[i]));
}

template <typename T, typename W>
__global__ void layernorm_kernel(const T* __restrict__ x, const W* __restrict__ w, const W* __restrict__ b,
                                 T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int64_t d,
                                 float eps) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * d;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += to_f32(xr[i]);
  const float mu = block_sum(s, scratch) / static_cast<float>(d);
  float var = 0.0f;  // second pass over the row: no cancellation from E[x²] - E[x]²
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float c = to_f32(xr[i]) - mu;
    var += c * c;
  }
  var = block_sum(var, scratch) / static_cast<float>(d);
  const float rs = rsqrtf(var + eps);
  if (threadIdx.x == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = (to_f32(xr[i]) - mu) * rs * to_f32(w[i]) + (b ? to_f32(b[i]) : 0.0f);
    y[r * d + i] = from_f32<T>(v);
  }
}

// Grid-stride over rows; dynamic shared memory holds this block's dw (and db) partial [d] (x2).
template <typename T, typename W>
__global__ void rmsnorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const W* __restrict__ w,
                                        const float* __restrict__ rstd, const T* __restrict__ dres, T* __restrict__ dx,
                                        float* __restrict__ dw_part, int64_t rows, int64_t d, int64_t ld_dy,
                                        int64_t ld_res, int64_t ld_dx) {
  extern __shared__ float acc[];
  __shared__ float scratch[32];
  if (dw_part)
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) acc[i] = 0.0f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    const T* gr = dy + r * ld_dy;
    float dot = 0.0f;  // Σ dy·w·x
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dot += to_f32(gr[i]) * to_f32(w[i]) * to_f32(xr[i]);
    dot = block_sum(dot, scratch);
    const float rs = rstd[r];
    const float c = dot / static_cast<float>(d) * rs * rs * rs;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float g = to_f32(gr[i]), xv = to_f32(xr[i]);
      dx[r * ld_dx + i] = from_f32<T>((rs * g * to_f32(w[i]) - c * xv) + (dres ? to_f32(dres[r * ld_res + i]) : 0.0f));
      if (dw_part) acc[i] += g * xv * rs;
    }
  }
  if (dw_part)
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dw_part[int64_t(blockIdx.x) * d + i] = acc[i];
}

template <typename T, typename W>
__global__ void layernorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const W* __restrict__ w,
                                          const float* __restrict__ mean, const float* __restrict__ rstd,
                                          const T* __restrict__ dres, T* __restrict__ dx, float* __restrict__ dw_part,
                                          float* __restrict__ db_part, int64_t rows, int64_t d) {
  extern __shared__ float acc[];  // [0, d): dw, [d, 2d): db
  __shared__ float scratch[32];
  for (int64_t i = threadIdx.x; i < 2 * d; i += blockDim.x) acc[i] = 0.0f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    const T* gr = dy + r * d;
    const float mu = mean[r], rs = rstd[r];
    float s1 = 0.0f, s2 = 0.0f;  // Σ dx̂, Σ dx̂·x̂
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xhat = (to_f32(xr[i]) - mu) * rs;
      const float g = to_f32(gr[i]) * to_f32(w[i]);
      s1 += g;
      s2 += g * xhat;
    }
    s1 = block_sum(s1, scratch) / static_cast<float>(d);
    s2 = block_sum(s2, scratch) / static_cast<float>(d);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xhat = (to_f32(xr[i]) - mu) * rs;
      const float gy = to_f32(gr[i]);
      dx[r * d + i] = from_f32<T>(rs * (gy * to_f32(w[i]) - s1 - xhat * s2) + (dres ? to_f32(dres[r * d + i]) : 0.0f));
      acc[i] += gy * xhat;
      acc[d + i] += gy;
    }
  }
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    if (dw_part) dw_part[int64_t(blockIdx.x) * d + i] = acc[i];
    if (db_part) db_part[int64_t(blockIdx.x) * d + i] = acc[d + i];
  }
}

// ---- RMSNorm fast path: rows held in registers, 16-byte accesses ----
// When d is a multiple of the pack size (8 bf16 / 4 f32), rows are 16-byte aligned and
// d <= 512 threads x kPacks packs, each thread owns the same kPacks packs of columns in every row:
// x and dy are read once, w is loaded once per block and the backward's dw partial sits in
// registers (no shared-memory accumulator).
// At most 512 threads a block, so that the backward's 2 x 8 bf16 columns of x, dy and the dw
// partial fit in registers (1024 threads would cap them at 64 and spill).
constexpr int kPacks = 2;
constexpr int kMaxVecThreads = 512;

template <typename T>
struct alignas(16) Pack16 {
  T v[16 / sizeof(T)];
};

template <typename T, typename W>
__global__ void __launch_bounds__(kMaxVecThreads) rmsnorm_vec_kernel(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y,
                                   float* __restrict__ rstd, int64_t rows, int64_t d, float eps, int64_t ldy) {
  constexpr int V = 16 / sizeof(T);
  __shared__ float scratch[32];
  allow_dependents();  // a dependent after it (a decode step's lm_head) loads its weights meanwhile
  const int64_t packs = d / V;
  float wv[kPacks][V];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = (threadIdx.x + int64_t(p) * blockDim.x) * V;
#pragma unroll
    for (int e = 0; e < V; ++e) wv[p][e] = c < d ? to_f32(w[c + e]) : 0.0f;
  }
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Pack16<T>* xr = reinterpret_cast<const Pack16<T>*>(x + r * d);
    Pack16<T> xp[kPacks];
    float ss = 0.0f;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t k = threadIdx.x + int64_t(p) * blockDim.x;
      if (k < packs) {
        xp[p] = xr[k];
#pragma unroll
        for (int e = 0; e < V; ++e) ss += to_f32(xp[p].v[e]) * to_f32(xp[p].v[e]);
      }
    }
    ss = block_sum(ss, scratch);
    const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    Pack16<T>* yr = reinterpret_cast<Pack16<T>*>(y + r * ldy);
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t k = threadIdx.x + int64_t(p) * blockDim.x;
      if (k < packs) {
        Pack16<T> o;
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = from_f32<T>(to_f32(xp[p].v[e]) * rs * wv[p][e]);
        yr[k] = o;
      }
    }
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kMaxVecThreads) rmsnorm_backward_vec_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                            const W* __restrict__ w, const float* __restrict__ rstd,
                                            const T* __restrict__ dres, T* __restrict__ dx, float* __restrict__ dw_part,
                                            int64_t rows, int64_t d, int64_t ld_dy, int64_t ld_res, int64_t ld_dx) {
  constexpr int V = 16 / sizeof(T);
  __shared__ float scratch[32];
  const int64_t packs = d / V;
  float wv[kPacks][V], dwv[kPacks][V];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = (threadIdx.x + int64_t(p) * blockDim.x) * V;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      wv[p][e] = c < d ? to_f32(w[c + e]) : 0.0f;
      dwv[p][e] = 0.0f;
    }
  }
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Pack16<T>* xr = reinterpret_cast<const Pack16<T>*>(x + r * d);
    const Pack16<T>* gr = reinterpret_cast<const Pack16<T>*>(dy + r * ld_dy);
    const Pack16<T>* rr = reinterpret_cast<const Pack16<T>*>(dres + r * ld_res);
    Pack16<T> xp[kPacks], gp[kPacks], res[kPacks];
    float dot = 0.0f;  // Σ dy·w·x
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t k = threadIdx.x + int64_t(p) * blockDim.x;
      if (k < packs) {
        xp[p] = xr[k];
        gp[p] = gr[k];
        if (dres) res[p] = rr[k];  // with x and dy: one memory latency a row, not two
#pragma unroll
        for (int e = 0; e < V; ++e) dot += to_f32(gp[p].v[e]) * wv[p][e] * to_f32(xp[p].v[e]);
      }
    }
    dot = block_sum(dot, scratch);
    const float rs = rstd[r];
    const float c = dot / static_cast<float>(d) * rs * rs * rs;
    Pack16<T>* dr = reinterpret_cast<Pack16<T>*>(dx + r * ld_dx);
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t k = threadIdx.x + int64_t(p) * blockDim.x;
      if (k < packs) {
        Pack16<T> o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float g = to_f32(gp[p].v[e]), xv = to_f32(xp[p].v[e]);
          o.v[e] = from_f32<T>((rs * g * wv[p][e] - c * xv) + (dres ? to_f32(res[p].v[e]) : 0.0f));
          dwv[p][e] += g * xv * rs;
        }
        dr[k] = o;
      }
    }
  }
  if (!dw_part) return;
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t c = (threadIdx.x + int64_t(p) * blockDim.x) * V;
    if (c < d)
#pragma unroll
      for (int e = 0; e < V; ++e) dw_part[int64_t(blockIdx.x) * d + c + e] = dwv[p][e];
  }
}

// Threads per block for the fast path (0 when it does not apply): every thread owns kPacks packs.
int vec_threads(int64_t d, DType t, std::initializer_list<const void*> ptrs) {
  const int V = 16 / static_cast<int>(dtype_size(t));
  if (d % V != 0) return 0;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return 0;
  const int64_t packs = d / V;
  const int64_t threads = (packs + kPacks - 1) / kPacks;
  if (threads > kMaxVecThreads) return 0;
  return static_cast<int>(std::max<int64_t>(32, (threads + 31) / 32 * 32));
}

// Blocks for the fast path: ~1024 threads resident per SM (2 to 16 blocks of `threads`), so that
// small rows (Qwen-0.5B's 896: 64-thread blocks) still fill the GPU.
int vec_grid(int64_t rows, int threads, Device dev) {
  const int per_sm = std::clamp(1024 / threads, 2, 16);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(per_sm) * multiprocessor_count(dev))));
}

int norm_grid(int64_t rows, Device dev) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(rows, 2 * multiprocessor_count(dev))));
}

// Raises the dynamic shared-memory limit of `kernel` when a backward needs more than 48 KB.
template <typename K>
void allow_smem(K kernel, size_t bytes, int64_t d) {
  if (bytes > 227 * 1024)
    throw error("norm backward: hidden size ", d, " is too large for the CUDA kernel (at most ",
                227 * 1024 / sizeof(float) / 2, ")");
  if (bytes > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

void check_norm_args(const char* op, const Tensor& x, const Tensor& w, int64_t* rows) {
  check_arg(x, op, "x");
  check_arg(w, op, "w");
  const int64_t d = w.numel();
  // Like the CPU: x is any tensor whose numel is a multiple of d, normalised in rows of d (Qwen3's
  // QK-norm passes q [n, heads*hd] with a weight [hd]).
  LR_CHECK(d > 0 && x.numel() % d == 0, op, " ", x.str(), " with weight ", w.str());
  *rows = x.numel() / d;
}

// The residual stream's gradient added to a norm's dx: null, or [rows, d] in x's dtype.
const void* residual_grad(const Tensor* dres, const Tensor& x, const char* op) {
  if (!dres) return nullptr;
  check_arg(*dres, op, "dres");
  LR_CHECK(dres->dtype() == x.dtype() && dres->numel() == x.numel(), op, " dres ", dres->str(), " x ", x.str());
  return dres->raw();
}

}  // namespace

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd_out, const ColumnBlock* into) {
  int64_t rows;
  check_norm_args("rmsnorm", x, w, &rows);
  const int64_t d = w.numel();
  Tensor y = into ? into->t : Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty({rows}, DType::F32, x.device());
  if (rows > 0) {
    cudaStream_t st = stream_for(x.device());
    // The output's first element and row stride (elements): a block of a wider matrix keeps its
    // rows 16-byte aligned for the vector kernel only when the stride's bytes are a multiple of 16.
    char* out = static_cast<char*>(y.raw()) + (into ? into->col * dtype_size(x.dtype()) : 0);
    const int64_t ldy = into ? into->t.dim(1) : d;
    const bool vec_rows = (ldy * dtype_size(x.dtype())) % 16 == 0;
    if (const int threads = vec_rows ? vec_threads(d, x.dtype(), {x.raw(), out}) : 0) {
      const int grid = vec_grid(rows, threads, x.device());
      LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W,
          rmsnorm_vec_kernel<<<grid, threads, 0, st>>>(x.data<T>(), w.data<W>(), reinterpret_cast<T*>(out),
                                                       rstd.data<float>(), rows, d, eps, ldy)));
    } else {
      LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W,
          rmsnorm_kernel<<<unsigned(rows), kThreads, 0, st>>>(x.data<T>(), w.data<W>(), reinterpret_cast<T*>(out),
                                                             rstd.data<float>(), d, eps, ldy)));
    }
    LR_CUDA_LAUNCHED();
  }
  if (rstd_out) *rstd_out = rstd;
  return y;
}

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean_out, Tensor* rstd_out) {
  int64_t rows;
  check_norm_args("layernorm", x, w, &rows);
  const int64_t d = w.numel();
  if (b.defined()) {
    check_arg(b, "layernorm", "b");
    LR_CHECK(b.numel() == d && b.dtype() == w.dtype(), "layernorm bias ", b.str(), " for weight ", w.str());
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, DType::F32, x.device()), rstd = Tensor::empty({rows}, DType::F32, x.device());
  if (rows > 0) {
    cudaStream_t st = stream_for(x.device());
    LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W,
        layernorm_kernel<<<unsigned(rows), kThreads, 0, st>>>(x.data<T>(), w.data<W>(),
                                                             b.defined() ? b.data<W>() : nullptr, y.data<T>(),
                                                             mean.data<float>(), rstd.data<float>(), d, eps)));
    LR_CUDA_LAUNCHED();
  }
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw,
                        const Tensor* dres, const Tensor* into) {
  int64_t rows;
  check_norm_args("rmsnorm_backward", x, w, &rows);
  check_arg(dy, "rmsnorm_backward", "dy");
  // dy, dres [rows, d], or wider: their first d columns (ld_* their row strides); dx likewise into `into`
  auto row_stride = [&](const Tensor& t) { return t.numel() == x.numel() ? w.numel() : t.dim(1); };
  const int64_t ld_dy = row_stride(dy);
  LR_CHECK(dy.dtype() == x.dtype() && (dy.numel() == x.numel() || (dy.rank() == 2 && dy.dim(0) == rows)),
           "rmsnorm_backward dy ", dy.str(), " x ", x.str());
  const bool wide_res = dres && dres->numel() != x.numel();
  if (wide_res) check_arg(*dres, "rmsnorm_backward", "dres");
  LR_CHECK(!wide_res || (dres->dtype() == x.dtype() && dres->rank() == 2 && dres->dim(0) == rows),
           "rmsnorm_backward dres ", dres->str(), " x ", x.str());
  const void* res = wide_res ? dres->raw() : residual_grad(dres, x, "rmsnorm_backward");
  const int64_t ld_res = dres ? row_stride(*dres) : w.numel();
  if (into) {
    check_arg(*into, "rmsnorm_backward", "into");
    LR_CHECK(into->dtype() == x.dtype() && into->rank() == 2 && into->dim(0) == rows && into->dim(1) >= w.numel(),
             "rmsnorm_backward into ", into->str(), " x ", x.str());
  }
  const int64_t ld_dx = into ? into->dim(1) : w.numel();
  LR_CHECK(rstd.dtype() == DType::F32 && rstd.numel() == rows, "rmsnorm_backward rstd ", rstd.str());
  const int64_t d = w.numel();
  const bool want_dw = dw && dw->defined();
  if (want_dw) {
    check_arg(*dw, "rmsnorm_backward", "dw");
    LR_CHECK(dw->dtype() == DType::F32 && dw->numel() == d, "rmsnorm_backward: dw must be F32 [", d, "], got ",
             dw->str());
  }
  Tensor dx = into ? *into : Tensor::empty(x.shape(), x.dtype(), x.device());
  if (rows == 0) return dx;
  const bool vec_rows = (ld_dy * dtype_size(x.dtype())) % 16 == 0 && (ld_res * dtype_size(x.dtype())) % 16 == 0 &&
                        (ld_dx * dtype_size(x.dtype())) % 16 == 0;
  const int vthreads = vec_rows ? vec_threads(d, x.dtype(), {x.raw(), dy.raw(), dx.raw(), res ? res : dx.raw()}) : 0;
  const int grid = vthreads ? vec_grid(rows, vthreads, x.device()) : norm_grid(rows, x.device());
  Tensor part = want_dw ? Tensor::empty({grid, d}, DType::F32, x.device()) : Tensor();
  const size_t smem = want_dw ? d * sizeof(float) : 0;
  cudaStream_t st = stream_for(x.device());
  if (const int threads = vthreads) {
    LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W,
        rmsnorm_backward_vec_kernel<T, W><<<grid, threads, 0, st>>>(dy.data<T>(), x.data<T>(), w.data<W>(),
                                                                    rstd.data<float>(), static_cast<const T*>(res),
                                                                    dx.data<T>(),
                                                                    want_dw ? part.data<float>() : nullptr, rows,
                                                                    d, ld_dy, ld_res, ld_dx)));
    LR_CUDA_LAUNCHED();
    if (want_dw) column_sum_add(part.raw(), DType::F32, grid, d, dw->data<float>(), x.device());
    return dx;
  }
  LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W, {
    allow_smem(rmsnorm_backward_kernel<T, W>, smem, d);
    rmsnorm_backward_kernel<T, W><<<grid, kThreads, smem, st>>>(dy.data<T>(), x.data<T>(), w.data<W>(),
                                                                rstd.data<float>(), static_cast<const T*>(res),
                                                                dx.data<T>(),
                                                                want_dw ? part.data<float>() : nullptr, rows, d,
                                                                ld_dy, ld_res, ld_dx);
  }));
  LR_CUDA_LAUNCHED();
  if (want_dw) column_sum_add(part.raw(), DType::F32, grid, d, dw->data<float>(), x.device());
  return dx;
}

Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db, const Tensor* dres) {
  int64_t rows;
  check_norm_args("layernorm_backward", x, w, &rows);
  check_arg(dy, "layernorm_backward", "dy");
  LR_CHECK(dy.dtype() == x.dtype() && dy.numel() == x.numel(), "layernorm_backward dy ", dy.str(), " x ", x.str());
  const void* res = residual_grad(dres, x, "layernorm_backward");
  LR_CHECK(rstd.dtype() == DType::F32 && rstd.numel() == rows && mean.dtype() == DType::F32 && mean.numel() == rows,
           "layernorm_backward mean ", mean.str(), " rstd ", rstd.str());
  const int64_t d = w.numel();
  const bool want_dw = dw && dw->defined(), want_db = db && db->defined();
  for (Tensor* g : {want_dw ? dw : nullptr, want_db ? db : nullptr})
    if (g) {
      check_arg(*g, "layernorm_backward", "weight grad");
      LR_CHECK(g->dtype() == DType::F32 && g->numel() == d, "layernorm_backward: grads must be F32 [", d, "], got ",
               g->str());
    }
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (rows == 0) return dx;
  const int grid = norm_grid(rows, x.device());
  Tensor dw_part = want_dw ? Tensor::empty({grid, d}, DType::F32, x.device()) : Tensor();
  Tensor db_part = want_db ? Tensor::empty({grid, d}, DType::F32, x.device()) : Tensor();
  const size_t smem = 2 * d * sizeof(float);
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T, LR_FLOAT_TYPES(w.dtype(), W, {
    allow_smem(layernorm_backward_kernel<T, W>, smem, d);
    layernorm_backward_kernel<T, W><<<grid, kThreads, smem, st>>>(
        dy.data<T>(), x.data<T>(), w.data<W>(), mean.data<float>(), rstd.data<float>(), static_cast<const T*>(res),
        dx.data<T>(),
        want_dw ? dw_part.data<float>() : nullptr, want_db ? db_part.data<float>() : nullptr, rows, d);
  }));
  LR_CUDA_LAUNCHED();
  if (want_dw) column_sum_add(dw_part.raw(), DType::F32, grid, d, dw->data<float>(), x.device());
  if (want_db) column_sum_add(db_part.raw(), DType::F32, grid, d, db->data<float>(), x.device());
  return dx;
}

}  // namespace lowrank::cuda
