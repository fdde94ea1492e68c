// Segmented LoRA for mixed-adapter batches (the BGMV kernels of Punica / S-LoRA): every row of the
// batch carries its own adapter, so the shrink and the expand are each one launch over the whole
// batch instead of one GEMM pair per adapter. Decode batches have few rows (one per sequence) and
// small ranks, so both kernels are memory-bound matrix-vector products:
//   shrink: h[i, k] = Σ_c x[i, c] · A_j[k, c]           one warp per (row, rank index), f32 sums
//   expand: y[i, o] += s_j · Σ_k h[i, k] · B_j[o, k]     one thread per (row, output column)
// h lives in an f32 scratch [n, max rank]. The adapters' pointers, ranks and scales travel as a
// kernel parameter (no upload per call): up to kAdaptersPerLaunch adapters per launch pair, more
// adapters take more launch pairs, each covering the rows of its adapters.
// When every row of a launch starts on 16 bytes (in, resp. each rank, a multiple of 16 bytes of
// elements), both kernels read 16 bytes per load. The CPU reference is src/backend/cpu/lora_rows.cpp.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kAdaptersPerLaunch = 128;  // 128 × 24 bytes: within the classic 4 KB of kernel parameters
constexpr int kShrinkWarps = 8;
constexpr int kExpandThreads = 256;
constexpr int kLoadsInFlight = 4;  // 16-byte loads a lane issues before using any

struct AdapterEntry {
  const void* a;  // [rank, in]
  const void* b;  // [out, rank]
  int rank;       // 0: the adapter does not adapt this projection
  float scale;
};

struct AdapterTable {
  AdapterEntry e[kAdaptersPerLaunch];
  int first;  // global index of e[0]: rows name adapters globally
  int count;
};

// The entry of row i in this launch, or null when its adapter is elsewhere or absent.
__device__ __forceinline__ const AdapterEntry* entry_of(const AdapterTable& t, const int32_t* rows, int64_t i) {
  const int j = rows[i] - t.first;
  if (j < 0 || j >= t.count || t.e[j].rank == 0) return nullptr;
  return &t.e[j];
}

// Σ a[k] · b[k] over the 16 / sizeof(T) elements of two 16-byte words, in f32.
template <typename T>
__device__ __forceinline__ float dot16(const uint4& a, const uint4& b) {
  const T* pa = reinterpret_cast<const T*>(&a);
  const T* pb = reinterpret_cast<const T*>(&b);
  float s = 0;
#pragma unroll
  for (int k = 0; k < int(16 / sizeof(T)); ++k) s += to_f32(pa[k]) * to_f32(pb[k]);
  return s;
}

// grid (n, ceil(max_rank / kShrinkWarps)), kShrinkWarps warps: warp w of block (i, g) computes
// h[i, g · kShrinkWarps + w], its lanes striding over the input columns.
template <typename T, bool Vec>
__global__ void lora_shrink_kernel(const T* __restrict__ x, int64_t in, const int32_t* __restrict__ rows,
                                   const __grid_constant__ AdapterTable t, float* __restrict__ h, int64_t h_cols) {
  const int64_t i = blockIdx.x;
  const AdapterEntry* e = entry_of(t, rows, i);
  if (!e) return;
  const int k = blockIdx.y * kShrinkWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (k >= e->rank) return;
  const T* xi = x + i * in;
  const T* ak = static_cast<const T*>(e->a) + k * in;
  float acc = 0;
  if constexpr (Vec) {
    // kLoadsInFlight words of x and of A per lane are loaded before any is used: with 64 rows
    // reading 64 different adapters, A comes from DRAM, and one load at a time per lane leaves the
    // kernel waiting on latency rather than bandwidth.
    const uint4* xv = reinterpret_cast<const uint4*>(xi);
    const uint4* av = reinterpret_cast<const uint4*>(ak);
    const int64_t words = in / int64_t(16 / sizeof(T));
    for (int64_t base = 0; base < words; base += 32 * kLoadsInFlight) {
      uint4 xw[kLoadsInFlight], aw[kLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int64_t c = base + lane + 32 * u;
        xw[u] = c < words ? xv[c] : uint4{0, 0, 0, 0};
        aw[u] = c < words ? av[c] : uint4{0, 0, 0, 0};
      }
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) acc += dot16<T>(xw[u], aw[u]);
    }
  } else {
    for (int64_t c = lane; c < in; c += 32) acc += to_f32(xi[c]) * to_f32(ak[c]);
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) h[i * h_cols + k] = acc;
}

// grid (n, ceil(out / kExpandThreads)): thread o of row i adds s · h[i] · B[o]ᵀ into y[i, o].
template <typename T, bool Vec>
__global__ void lora_expand_kernel(T* __restrict__ y, int64_t out, const int32_t* __restrict__ rows,
                                   const __grid_constant__ AdapterTable t, const float* __restrict__ h,
                                   int64_t h_cols) {
  extern __shared__ float hs[];  // [rank] of this row
  const int64_t i = blockIdx.x;
  const AdapterEntry* e = entry_of(t, rows, i);
  if (!e) return;  // uniform over the block: before any barrier
  const int r = e->rank;
  for (int k = threadIdx.x; k < r; k += blockDim.x) hs[k] = h[i * h_cols + k];
  __syncthreads();
  const int64_t o = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (o >= out) return;
  T* yo = y + i * out + o;
  const float y0 = to_f32(*yo);  // loaded first: in flight together with B's row
  const T* bo = static_cast<const T*>(e->b) + o * r;
  float acc = 0;
  constexpr int kPer = int(16 / sizeof(T));
  if (Vec && r <= kPer * kLoadsInFlight) {  // B's row in at most kLoadsInFlight words, all loaded at once
    const uint4* bv = reinterpret_cast<const uint4*>(bo);
    uint4 bw[kLoadsInFlight];
#pragma unroll
    for (int w = 0; w < kLoadsInFlight; ++w) bw[w] = w * kPer < r ? bv[w] : uint4{0, 0, 0, 0};
#pragma unroll
    for (int w = 0; w < kLoadsInFlight; ++w) {
      if (w * kPer >= r) break;
      const T* pb = reinterpret_cast<const T*>(&bw[w]);
#pragma unroll
      for (int k = 0; k < kPer; ++k) acc += hs[w * kPer + k] * to_f32(pb[k]);
    }
  } else if (Vec) {  // r is a multiple of 16 / sizeof(T)
    const uint4* bv = reinterpret_cast<const uint4*>(bo);
    for (int w = 0; w < r / kPer; ++w) {
      const uint4 word = bv[w];
      const T* pb = reinterpret_cast<const T*>(&word);
#pragma unroll
      for (int k = 0; k < kPer; ++k) acc += hs[w * kPer + k] * to_f32(pb[k]);
    }
  } else {
    for (int k = 0; k < r; ++k) acc += hs[k] * to_f32(bo[k]);
  }
  *yo = from_f32<T>(y0 + e->scale * acc);
}

}  // namespace

void lora_rows_(Tensor& y, const Tensor& x, const ops::LoraRows& t) {
  check_arg(y, "lora_rows_", "y");
  check_arg(x, "lora_rows_", "x");
  check_arg(t.rows, "lora_rows_", "rows", true);
  const int64_t n = x.dim(0), in = x.dim(1), out = y.dim(1);
  const auto adapters = static_cast<int>(t.a.size());
  int64_t max_rank = 0;
  for (const Tensor& a : t.a)
    if (a.defined()) max_rank = std::max(max_rank, a.dim(0));
  if (n == 0 || out == 0 || max_rank == 0) return;
  LR_CHECK(n < (int64_t(1) << 31) && (out + kExpandThreads - 1) / kExpandThreads <= 65535, "lora_rows_: ", x.str(),
           " into ", y.str(), " is too large for one launch");
  const Device d = x.device();
  cudaStream_t stream = stream_for(d);
  Tensor h = Tensor::empty({n, max_rank}, DType::F32, d);
  for (int first = 0; first < adapters; first += kAdaptersPerLaunch) {
    AdapterTable table{};
    table.first = first;
    table.count = std::min(kAdaptersPerLaunch, adapters - first);
    int64_t rank = 0;  // the largest of this launch
    // 16-byte loads when every row read starts on 16 bytes: x's and A's rows (in · size), B's (r · size).
    const int64_t per = 16 / static_cast<int64_t>(dtype_size(x.dtype()));
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    bool vec_shrink = in % per == 0 && aligned(x.raw()), vec_expand = true;
    for (int j = 0; j < table.count; ++j) {
      const Tensor &a = t.a[first + j], &b = t.b[first + j];
      if (!a.defined()) continue;
      table.e[j] = {a.raw(), b.raw(), static_cast<int>(a.dim(0)), t.scale[first + j]};
      rank = std::max(rank, a.dim(0));
      vec_shrink = vec_shrink && aligned(a.raw());
      vec_expand = vec_expand && a.dim(0) % per == 0 && aligned(b.raw());
    }
    if (rank == 0) continue;
    const dim3 shrink_grid(static_cast<unsigned>(n), static_cast<unsigned>((rank + kShrinkWarps - 1) / kShrinkWarps));
    const dim3 expand_grid(static_cast<unsigned>(n), static_cast<unsigned>((out + kExpandThreads - 1) / kExpandThreads));
    const size_t shared = static_cast<size_t>(rank) * sizeof(float);
    LR_FLOAT_TYPES(x.dtype(), T, {
      const int32_t* rows = t.rows.data<int32_t>();
      if (vec_shrink)
        lora_shrink_kernel<T, true><<<shrink_grid, kShrinkWarps * 32, 0, stream>>>(x.data<T>(), in, rows, table,
                                                                                  h.data<float>(), max_rank);
      else
        lora_shrink_kernel<T, false><<<shrink_grid, kShrinkWarps * 32, 0, stream>>>(x.data<T>(), in, rows, table,
                                                                                   h.data<float>(), max_rank);
      LR_CUDA_LAUNCHED();
      if (vec_expand)
        lora_expand_kernel<T, true><<<expand_grid, kExpandThreads, shared, stream>>>(y.data<T>(), out, rows, table,
                                                                                    h.data<float>(), max_rank);
      else
        lora_expand_kernel<T, false><<<expand_grid, kExpandThreads, shared, stream>>>(y.data<T>(), out, rows, table,
                                                                                     h.data<float>(), max_rank);
      LR_CUDA_LAUNCHED();
    });
  }
}

}  // namespace lowrank::cuda
