// Segmented LoRA for mixed-adapter batches (the BGMV kernels of Punica / S-LoRA): every row of the
// batch carries its own adapter, so the shrink and the expand are each one launch over the whole
// batch instead of one GEMM pair per adapter. Decode batches have few rows (one per sequence) and
// small ranks, so both kernels are memory-bound matrix-vector products:
//   shrink: h[i, k] = Σ_c x[i, c] · A_j[k, c]           one warp per (row, rank index), f32 sums
//   expand: y[i, o] += s_j · Σ_k h[i, k] · B_j[o, k]     one thread per (row, output column)
// h lives in an f32 scratch [n, max rank]. The adapters' pointers, ranks and scales travel as a
// kernel parameter (no upload per call): up to kAdaptersPerLaunch adapters per launch pair, more
// adapters take more launch pairs, each covering the rows of its adapters.
// The CPU reference is src/backend/cpu/lora_rows.cpp.
#include <algorithm>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kAdaptersPerLaunch = 128;  // 128 × 24 bytes: within the classic 4 KB of kernel parameters
constexpr int kShrinkWarps = 8;
constexpr int kExpandThreads = 256;

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

// grid (n, ceil(max_rank / kShrinkWarps)), kShrinkWarps warps: warp w of block (i, g) computes
// h[i, g · kShrinkWarps + w], its lanes striding over the input columns.
template <typename T>
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
  for (int64_t c = lane; c < in; c += 32) acc += to_f32(xi[c]) * to_f32(ak[c]);
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) h[i * h_cols + k] = acc;
}

// grid (n, ceil(out / kExpandThreads)): thread o of row i adds s · h[i] · B[o]ᵀ into y[i, o].
template <typename T>
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
  const T* bo = static_cast<const T*>(e->b) + o * r;
  float acc = 0;
  for (int k = 0; k < r; ++k) acc += hs[k] * to_f32(bo[k]);
  T* yo = y + i * out + o;
  *yo = from_f32<T>(to_f32(*yo) + e->scale * acc);
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
    for (int j = 0; j < table.count; ++j) {
      const Tensor &a = t.a[first + j], &b = t.b[first + j];
      if (!a.defined()) continue;
      table.e[j] = {a.raw(), b.raw(), static_cast<int>(a.dim(0)), t.scale[first + j]};
      rank = std::max(rank, a.dim(0));
    }
    if (rank == 0) continue;
    const dim3 shrink_grid(static_cast<unsigned>(n), static_cast<unsigned>((rank + kShrinkWarps - 1) / kShrinkWarps));
    const dim3 expand_grid(static_cast<unsigned>(n), static_cast<unsigned>((out + kExpandThreads - 1) / kExpandThreads));
    const size_t shared = static_cast<size_t>(rank) * sizeof(float);
    LR_FLOAT_TYPES(x.dtype(), T, {
      lora_shrink_kernel<T><<<shrink_grid, kShrinkWarps * 32, 0, stream>>>(
          x.data<T>(), in, t.rows.data<int32_t>(), table, h.data<float>(), max_rank);
      LR_CUDA_LAUNCHED();
      lora_expand_kernel<T><<<expand_grid, kExpandThreads, shared, stream>>>(
          y.data<T>(), out, t.rows.data<int32_t>(), table, h.data<float>(), max_rank);
      LR_CUDA_LAUNCHED();
    });
  }
}

}  // namespace lowrank::cuda
