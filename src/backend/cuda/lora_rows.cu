// Segmented LoRA for mixed-adapter batches (the BGMV kernels of Punica / S-LoRA): every row of the
// batch carries its own adapter, so a projection's LoRA is one launch over the whole batch instead
// of one GEMM pair per adapter. Decode batches have few rows (one per sequence) and small ranks, so
// the work is memory-bound matrix-vector products, fused into one kernel per projection:
//   shrink: h[k] = Σ_c x[i, c] · A_j[k, c]              warps of the block over k, f32 sums
//   expand: y[i, o] += s_j · Σ_k h[k] · B_j[o, k]        threads over output columns
// One block per (row, slice of kColsPerBlock output columns): each block computes its row's h
// itself (into shared memory), so wide projections (gate/up) shrink a few times per row, from L2,
// rather than paying a second launch and an h round trip through global memory (decode steps are
// chains of short kernels, so a launch costs more than the repeated shrink).
// The adapters' pointers, ranks and scales travel as a kernel parameter (no upload per call): up
// to kAdaptersPerLaunch adapters per launch, more adapters take more launches, each covering the
// rows of its adapters. When every row of a launch starts on 16 bytes (in, resp. each rank, a
// multiple of 16 bytes of elements), loads are 16 bytes wide. The CPU reference is
// src/backend/cpu/lora_rows.cpp.
#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kAdaptersPerLaunch = 128;  // 128 × 24 bytes: within the classic 4 KB of kernel parameters
constexpr int kThreads = 256;             // per block: 8 warps
constexpr int kColsPerThread = 4;
constexpr int kColsPerBlock = kThreads * kColsPerThread;
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

// One lane's part of x · a over `in` elements (lanes stride by 32; the warp sums them).
// kLoadsInFlight words of x and of a per lane are loaded before any is used: with 64 rows reading
// 64 different adapters, A comes from DRAM, and one load at a time per lane waits on latency.
template <typename T, bool Vec>
__device__ __forceinline__ float lane_dot(const T* __restrict__ x, const T* __restrict__ a, int64_t in, int lane) {
  float acc = 0;
  if constexpr (Vec) {
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* av = reinterpret_cast<const uint4*>(a);
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
    for (int64_t c = lane; c < in; c += 32) acc += to_f32(x[c]) * to_f32(a[c]);
  }
  return acc;
}

// y[i, o] += s · h · B[o]ᵀ for one output column; the load of y goes out with B's row.
template <typename T, bool Vec>
__device__ __forceinline__ void expand_column(T* __restrict__ yo, const T* __restrict__ bo, const float* hs, int r,
                                              float scale) {
  const float y0 = to_f32(*yo);
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
  *yo = from_f32<T>(y0 + scale * acc);
}

// grid (n, ceil(out / kColsPerBlock)), kThreads threads: the row's h = x A_jᵀ (warp w computes
// h[w], h[w + 8], ...), then y[i, o] += s_j · h B_j[o]ᵀ for the block's columns.
template <typename T, bool VecShrink, bool VecExpand>
__global__ void __launch_bounds__(kThreads)
lora_rows_kernel(const T* __restrict__ x, int64_t in, T* __restrict__ y, int64_t out, const int32_t* __restrict__ rows,
                 const __grid_constant__ AdapterTable t) {
  extern __shared__ float hs[];  // [rank] of this row
  const int64_t i = blockIdx.x;
  const AdapterEntry* e = entry_of(t, rows, i);
  if (!e) return;  // uniform over the block: before any barrier
  const int r = e->rank, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const T* xi = x + i * in;
  for (int k = warp; k < r; k += kThreads / 32) {
    float acc = lane_dot<T, VecShrink>(xi, static_cast<const T*>(e->a) + k * in, in, lane);
    for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) hs[k] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int c = 0; c < kColsPerThread; ++c) {
    const int64_t o = blockIdx.y * int64_t(kColsPerBlock) + c * kThreads + threadIdx.x;
    if (o < out)
      expand_column<T, VecExpand>(y + i * out + o, static_cast<const T*>(e->b) + o * r, hs, r, e->scale);
  }
}

}  // namespace

void lora_rows_(Tensor& y, const Tensor& x, const ops::LoraRows& t) {
  check_arg(y, "lora_rows_", "y");
  check_arg(x, "lora_rows_", "x");
  check_arg(t.rows, "lora_rows_", "rows", true);
  const int64_t n = x.dim(0), in = x.dim(1), out = y.dim(1);
  const auto adapters = static_cast<int>(t.a.size());
  if (n == 0 || out == 0) return;
  LR_CHECK(n < (int64_t(1) << 31) && (out + kColsPerBlock - 1) / kColsPerBlock <= 65535, "lora_rows_: ", x.str(),
           " into ", y.str(), " is too large for one launch");
  cudaStream_t stream = stream_for(x.device());
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
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>((out + kColsPerBlock - 1) / kColsPerBlock));
    const size_t shared = static_cast<size_t>(rank) * sizeof(float);
    LR_FLOAT_TYPES(x.dtype(), T, {
      const int32_t* rows = t.rows.data<int32_t>();
      auto launch = [&](auto kernel) {
        kernel<<<grid, kThreads, shared, stream>>>(x.data<T>(), in, y.data<T>(), out, rows, table);
      };
      if (vec_shrink && vec_expand) launch(lora_rows_kernel<T, true, true>);
      else if (vec_shrink) launch(lora_rows_kernel<T, true, false>);
      else if (vec_expand) launch(lora_rows_kernel<T, false, true>);
      else launch(lora_rows_kernel<T, false, false>);
      LR_CUDA_LAUNCHED();
    });
  }
}

}  // namespace lowrank::cuda
