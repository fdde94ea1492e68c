// One decode row's vocabulary projection and its greedy pick in one launch (ops::project_argmax).
// The lm_head is the largest weight a small model's decode step reads (Qwen2.5-0.5B: 272 of ~990
// MB a token). cuBLASLt's M = 1 GEMM reads it at the bandwidth as well, but after it came two
// argmax launches, a copy of the pick into the next step's ids and the gaps between them. Here:
//  - each warp dots kRows weight rows at a time with the row x (staged in shared memory), each
//    lane kLoads 16-byte packs of every row in flight, and keeps the first maximum of its rows
//    (they ascend);
//  - the block merges its warps' maxima; the last block to finish (a grid counter) merges the
//    blocks' and writes the pick;
//  - the launch is a programmatic dependent: its blocks load their first rows before they wait for
//    the kernel before (the final norm).
// Each logit is summed in one fixed order (a lane's packs, then the lanes by shuffles): every call
// gives the same bits, not cuBLASLt's.
// Measured (one H200, Qwen2.5-0.5B shape, one stream, bench_decode_gpu, same call): 1,456–1,472 ->
// 1,486–1,498 decode tok/s; in the decode trace it reads its 272 MB in 65.4 µs after its wait
// (4.16 TB/s; cuBLASLt's GEMM 3.96 under ncu). 2 rows x 4 packs, 8 x 2 and 4 x 2 measured the same
// as 4 x 4. Llama-3-8B's one stream is level (217 tok/s): its lm_head is 12% of the step there.
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "context.h"
#include "dependent_launch.cuh"
#include "launch_trace.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int64_t kMaxK = 16 * 1024;  // x staged in shared memory: 32 KB
constexpr int kCounter = DeviceContext::kGridCounters - 1;  // DeviceContext::grid_counters' last

// Whether pick (v, i) comes before (bv, bi) in the order of argmax_rows: the larger value, on ties
// the smaller index; an index < 0 is no pick.
__device__ __forceinline__ bool first_max(float v, int32_t i, float bv, int32_t bi) {
  return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

// A lane's packs v0, v0 + 32, ... of weight rows row0 .. row0 + kRows - 1 (zeros past V or K).
template <int kRows, int kLoads>
__device__ __forceinline__ void load_rows(const bf16* w, int64_t row0, int64_t V, int64_t packs, int64_t v0,
                                          uint4 (&u)[kRows][kLoads]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int64_t v = v0 + 32 * j;
      u[r][j] = row0 + r < V && v < packs ? load_stream(reinterpret_cast<const uint4*>(w + (row0 + r) * packs * 8) + v)
                                          : uint4{0, 0, 0, 0};
    }
}

// The block's first maximum of (v, i) over its threads (all of them call it); thread 0 gets it.
__device__ __forceinline__ void block_first_max(float& v, int32_t& i) {
  __shared__ float sv[kWarps];
  __shared__ int32_t si[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, v, o);
    const int32_t oi = __shfl_down_sync(0xffffffffu, i, o);
    if (first_max(ov, oi, v, i)) v = ov, i = oi;
  }
  if (lane == 0) sv[warp] = v, si[warp] = i;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int j = 1; j < kWarps; ++j)
      if (first_max(sv[j], si[j], v, i)) v = sv[j], i = si[j];
}

// kRows: weight rows a warp dots at once; kLoads: 16-byte packs of each a lane has in flight.
template <int kRows, int kLoads>
__global__ void __launch_bounds__(kThreads) project_argmax_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                                  float* __restrict__ y, int64_t V, int64_t k,
                                                                  float* __restrict__ part_v, int32_t* __restrict__ part_i,
                                                                  unsigned* __restrict__ counter, int32_t* __restrict__ ids,
                                                                  LaunchStamp* stamps) {
  extern __shared__ uint4 xs[];  // x's k / 8 packs
  __shared__ bool last;
  stamp_start(stamps);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t packs = k / 8, groups = (V + kRows - 1) / kRows;
  const int64_t first = int64_t(blockIdx.x) * kWarps + warp, stride = int64_t(gridDim.x) * kWarps;
  uint4 u[kRows][kLoads];
  load_rows<kRows, kLoads>(w, first * kRows, V, packs, lane, u);  // weights: no kernel of the step writes them
  wait_for_prior_grids();
  allow_dependents();
  stamp_wait(stamps);
  for (int64_t v = threadIdx.x; v < packs; v += kThreads) xs[v] = reinterpret_cast<const uint4*>(x)[v];
  __syncthreads();
  float best_v = -INFINITY;
  int32_t best_i = -1;
  for (int64_t g = first; g < groups; g += stride) {
    const int64_t row0 = g * kRows;
    float acc[kRows] = {};
    for (int64_t v0 = lane; v0 < packs; v0 += 32 * kLoads) {
      if (g != first || v0 != lane) load_rows<kRows, kLoads>(w, row0, V, packs, v0, u);
#pragma unroll
      for (int j = 0; j < kLoads; ++j) {
        const int64_t v = v0 + 32 * j;
        if (v >= packs) break;
        float fx[8];
        unpack8(xs[v], fx);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float fw[8];
          unpack8(u[r][j], fw);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r] = fmaf(fw[e], fx[e], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = warp_sum(acc[r]);  // every lane has it
      const int64_t row = row0 + r;
      if (row >= V) break;
      if (lane == r) y[row] = s;
      if (best_i < 0 || s > best_v) best_v = s, best_i = static_cast<int32_t>(row);
    }
  }
  block_first_max(best_v, best_i);
  if (threadIdx.x == 0) {
    part_v[blockIdx.x] = best_v;
    part_i[blockIdx.x] = best_i;
    __threadfence();  // the block's pick before the count that publishes it
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (last) {  // every block's pick is visible: merge them
    float v = -INFINITY;
    int32_t i = -1;
    for (int b = threadIdx.x; b < int(gridDim.x); b += kThreads) {
      const float bv = __ldcg(part_v + b);
      const int32_t bi = __ldcg(part_i + b);
      if (first_max(bv, bi, v, i)) v = bv, i = bi;
    }
    block_first_max(v, i);
    if (threadIdx.x == 0) {
      ids[0] = i;
      *counter = 0;  // zero for the next launch
    }
  }
  stamp_end(stamps);
}

// Blocks of `kernel` resident at once on d with `smem` bytes each (kept per kernel and shape).
int resident_blocks(const void* kernel, Device d, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, size_t>, int> known;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(kernel, d.index, smem);
  if (auto it = known.find(key); it != known.end()) return it->second;
  int per_sm = 0;
  LR_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  return known[key] = std::max(1, per_sm) * multiprocessor_count(d);
}

template <int kRows, int kLoads>
void launch_project_argmax(const Tensor& x, const Tensor& w, Tensor& y, Tensor& ids) {
  const Device d = x.device();
  const int64_t V = w.dim(0), k = x.dim(1);
  const size_t smem = static_cast<size_t>(k / 8) * sizeof(uint4);
  const int64_t groups = (V + kRows - 1) / kRows;
  auto kernel = project_argmax_kernel<kRows, kLoads>;
  const int blocks = static_cast<int>(
      std::min<int64_t>((groups + kWarps - 1) / kWarps, resident_blocks(reinterpret_cast<const void*>(kernel), d, smem)));
  Tensor part_v = Tensor::empty({blocks}, DType::F32, d);
  Tensor part_i = Tensor::empty({blocks}, DType::I32, d);
  launch_kernel(true, kernel, dim3(unsigned(blocks)), dim3(kThreads), smem, d, x.data<bf16>(), w.data<bf16>(),
                y.data<float>(), V, k, part_v.data<float>(), part_i.data<int32_t>(),
                context(d).grid_counters + kCounter, ids.data<int32_t>(), next_launch_stamps(d, "project_argmax", blocks));
}

}  // namespace

Tensor project_argmax(const Tensor& x, const Tensor& w, Tensor& ids) {
  check_arg(x, "project_argmax", "x");
  check_arg(w, "project_argmax", "w");
  check_arg(ids, "project_argmax", "ids", true);
  LR_CHECK(x.rank() == 2 && w.rank() == 2 && x.dim(1) == w.dim(1) && ids.dtype() == DType::I32 &&
               ids.numel() == x.dim(0) && w.dim(0) < (int64_t(1) << 31),
           "project_argmax x ", x.str(), " w ", w.str(), " ids ", ids.str());
  const int64_t M = x.dim(0), V = w.dim(0), k = x.dim(1);
  Tensor y = Tensor::empty({M, V}, DType::F32, x.device());
  const bool fused = M == 1 && V > 0 && x.dtype() == DType::BF16 && w.dtype() == DType::BF16 && k % 8 == 0 &&
                     k > 0 && k <= kMaxK && aligned16(x) && aligned16(w);
  if (!fused) {
    matmul_nt(x, w, y);
    const Tensor picks = argmax_rows(y);
    LR_CUDA(cudaMemcpyAsync(ids.raw(), picks.raw(), M * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream_for(x.device())));
    return y;
  }
  launch_project_argmax<4, 4>(x, w, y, ids);
  return y;
}

}  // namespace lowrank::cuda
