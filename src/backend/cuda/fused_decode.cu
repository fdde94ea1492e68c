// The projections of a decode step as few launches (rows <= 8, bf16): a one-stream decode step of a
// small model is bound by the number and latency of its kernels, not by bytes (Qwen2.5-0.5B: ~19
// launches a layer for ~30 MB of weights; with these, 7). The model uses them for one row
// (Model::decode_layer); with several, cuBLASLt's tensor-core GEMMs are faster. One kernel
// computes rmsnorm(x) for its few rows into shared memory and the products with up to three
// weights (q, k, v) or the gate and up weights with SwiGLU; another a product plus the residual.
// Each warp takes output rows two at a time (gate and up; or the two rows that RoPE rotates
// together, so that it is applied in the epilogue), reads them with 16-byte loads, several in
// flight, and dots them with every input row; lanes then sum by shuffles. Where the pairs would
// leave most warps idle (few outputs, wide K), 2 or 4 warps share a pair, each a part of K, summed
// in a fixed order. Roundings follow the unfused ops (rmsnorm, linear, add_bias_, rope_, swiglu,
// add_): the normed input, each product and each sum are rounded to bf16 where those ops store
// them. Anything else (f32, more rows, K not a multiple of 8, inputs too wide for shared memory)
// runs the unfused ops.
//
// Each launch is a programmatic dependent (dependent_launch.cuh) where its weights are small
// (kDependentMaxBytes): blocks issue their first weight loads and load the
// norm's weights before they wait for the kernel before, and read the residual, the positions
// and slots right after the wait, before the staging, so that those latencies hide under the
// staging and the dots (with the attention's early release of the next kernel, one stream on the
// Qwen2.5-0.5B shape, H200: 1,058 -> 1,196 tok/s; 693 -> 840 with an adapter).
//
// LoRA's updates (ops::LowRankUpdate) run in the same launch: its first blocks form the shrinks
// h = xn Aᵀ of all the op's updates (Shrinks: a row of A a block, K split over its threads) while
// the other blocks dot their row pairs, and each epilogue adds scale · h Bᵀ once the shrinks are
// counted done. A launch of their own before each projection (a programmatic dependent too) was
// 9% slower on the Qwen2.5-0.5B shape with an adapter and 4% on Llama-3-8B's (H200, one stream:
// 846 -> 922 and 183 -> 192 tok/s); in the projection's own blocks, each doing its shrink row
// before its pairs, it was 3% slower on the 0.5B shape (those blocks' pairs formed a tail).
#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "common.cuh"
#include "context.h"
#include "dependent_launch.cuh"
#include "launch_trace.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kWarps = 4;  // small blocks: more SMs share the few rows of small projections
constexpr int kMaxRows = 8;
constexpr int64_t kMaxSharedBytes = 160 * 1024;  // the staged input rows [M, K] in bf16
constexpr int64_t kDependentMaxBytes = 24 << 20;  // see launch_rows

struct Output {
  const bf16* w = nullptr;  // [n, K]
  const bf16* b = nullptr;  // [n] or null
  bf16* y = nullptr;        // [M, n]
  int64_t n = 0;
  int64_t pairs = 0;        // row pairs: (2p, 2p + 1), or with RoPE (head h, i) -> rows h·hd + i, + hd/2
  int half = 0;             // RoPE: hd / 2 (0: not rotated)
  bf16* pool = nullptr;     // ops::KVWrite: its paged pool [pool rows, n], row Args::slots[r] (null: none)
  // A low-rank update (ops::LowRankUpdate) added before RoPE / SwiGLU / the residual: null lb: none.
  const bf16* lb = nullptr;  // B [n, lr]
  const bf16* lh = nullptr;  // h [M, lr]
  int lr = 0;
  float ls = 0.0f;           // scale
  bool packed = false;       // lr % 8 == 0 and B, h 16-byte aligned: with_update's 16-byte loads
};

enum class Epilogue { Bias, Residual, SwiGlu };

// LoRA's shrinks h_p = xn A_pᵀ of the op's updates, formed inside the projection kernel by its
// first `blocks` blocks, which take no row pairs: block b takes rows b, b + blocks, ... of the
// concatenated A's (K split over its threads) and counts each row done on counters[0]; an
// epilogue that adds an update waits for all of them there. The pairs' blocks dot meanwhile.
struct Shrinks {
  const bf16* a[3] = {};  // [r_p, K]
  bf16* h[3] = {};        // [M, r_p]
  int r[3] = {};
  int rows = 0;           // Σ r_p (0: no update)
  int blocks = 0;         // the launch's first blocks, which form them and take no row pairs
  unsigned* counters = nullptr;  // DeviceContext::grid_counters: rows done, blocks done
};

struct Args {
  const bf16* x;       // [M, K]
  int m;
  int64_t k;
  const void* norm_w;  // [K] RMSNorm weight applied to x first (null: x as it is)
  bool norm_f32;       // its dtype: f32, else bf16
  float eps;
  Output out[3];       // row pairs numbered across the outputs in order; SwiGlu: gate, up
  int outs;
  int64_t pairs;       // Σ pairs (SwiGlu: n of the gate)
  const bf16* res;     // Residual: [M, out[0].n]
  int parts;           // warps per row pair, each dotting a contiguous part of K (1, 2 or 4)
  const int32_t* pos;  // RoPE: [M] positions, cos/sin [P, half] f32
  const float* cos_t;
  const float* sin_t;
  int64_t P;
  const int32_t* slots;  // KVWrite: [M] pool rows of the outputs with a pool (-1: none)
  int64_t pool_rows;
  Shrinks sh;
  LaunchStamp* stamps;  // LOWRANK_DECODE_TRACE (launch_trace.cuh); null: off
};

// v (output `row` of input row r, rounded) plus o's low-rank update, rounded once as matmul_nt(h,
// B, y, scale, 1) rounds it: scale · (h[r] · B[row]) + v.
// With a rank of a multiple of 8 (and 16-byte aligned rows), 16-byte loads, issued together: one
// memory latency where scalar loads took several. Same order of the sum either way. Not with
// SwiGLU (kPacked false): its two pairs in flight leave no registers (M = 1: 128 -> 168, three
// blocks a SM instead of four).
template <bool kPacked = true>
__device__ __forceinline__ float with_update(const Output& o, int r, int64_t row, float v) {
  if (!o.lb) return v;
  const bf16* b = o.lb + row * o.lr;
  const bf16* h = o.lh + static_cast<int64_t>(r) * o.lr;
  float acc = 0.0f;
  if (kPacked && o.packed) {
    constexpr int kBatch = 2;  // packs in flight: rank 16 in one batch
    for (int j0 = 0; j0 < o.lr / 8; j0 += kBatch) {
      uint4 hp[kBatch], bp[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (j0 + j < o.lr / 8) {
          hp[j] = reinterpret_cast<const uint4*>(h)[j0 + j];
          bp[j] = reinterpret_cast<const uint4*>(b)[j0 + j];
        }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (j0 + j >= o.lr / 8) break;
        float fh[8], fb[8];
        unpack8(hp[j], fh);
        unpack8(bp[j], fb);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc = fmaf(fh[i], fb[i], acc);
      }
    }
    return round_bf16(o.ls * acc + v);
  }
  for (int j = 0; j < o.lr; ++j) acc = fmaf(__bfloat162float(h[j]), __bfloat162float(b[j]), acc);
  return round_bf16(o.ls * acc + v);
}

// 16-byte loads in flight per lane and row. Down's (the residual epilogue's) rows are long (Qwen2.5-0.5B:
// 608 packs, 152 a warp of the four that share a pair): five cover a warp's part in one batch, all
// of it loaded before the wait, where four left a second batch, one more memory latency, after it.
// Four elsewhere: gate/up keeps two pairs in flight, and a fifth would cost it a block an SM; with
// more rows a fifth spills.
__host__ __device__ constexpr int loads_per_lane(Epilogue e, int m) { return e == Epilogue::Residual && m == 1 ? 5 : 4; }

// Loads a lane's batch of packs v0, v0 + 32, ..., v0 + 32 (U - 1) of rows wa and wb (null: zeros).
template <int U>
__device__ __forceinline__ void load_batch(const bf16* wa, const bf16* wb, int64_t v0, int64_t packs, uint4 (&ua)[U],
                                           uint4 (&ub)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t v = v0 + 32 * u;
    ua[u] = v < packs ? load_stream(reinterpret_cast<const uint4*>(wa) + v) : uint4{0, 0, 0, 0};
    ub[u] = v < packs && wb ? load_stream(reinterpret_cast<const uint4*>(wb) + v) : uint4{0, 0, 0, 0};
  }
}

// Dots of weight rows wa and wb (wb may be null) with the M staged rows over the packs [begin,
// end) of K; every lane ends with the sums. ua, ub hold the lane's first batch, loaded by the
// caller (before the staging, for the first rows of a warp: the weights' latency overlaps it).
template <int M, int U>
__device__ __forceinline__ void dot_rows(const bf16* xs, int64_t k, int m, int64_t begin, int64_t packs,
                                         const bf16* wa, const bf16* wb, uint4 (&ua)[U], uint4 (&ub)[U],
                                         float (&ya)[M], float (&yb)[M]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < M; ++r) ya[r] = yb[r] = 0.0f;
  for (int64_t v0 = begin + lane; v0 < packs; v0 += 32 * U) {
    if (v0 != begin + lane) load_batch(wa, wb, v0, packs, ua, ub);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = v0 + 32 * u;
      if (v >= packs) break;
      float fa[8], fb[8];
      unpack8(ua[u], fa);
      unpack8(ub[u], fb);
#pragma unroll
      for (int r = 0; r < M; ++r) {
        if (r >= m) break;
        float fx[8];
        unpack8(reinterpret_cast<const uint4*>(xs + r * k)[v], fx);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          ya[r] = fmaf(fa[i], fx[i], ya[r]);
          yb[r] = fmaf(fb[i], fx[i], yb[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < M; ++r)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ya[r] += __shfl_xor_sync(0xffffffffu, ya[r], o);
      yb[r] += __shfl_xor_sync(0xffffffffu, yb[r], o);
    }
}

// Row pair `pair` of the concatenated outputs: its output, and its two rows there (rb = -1: none).
__device__ __forceinline__ int rows_of(const Output* outs, int n, int64_t pair, int64_t& ra, int64_t& rb) {
  int o = 0;
  while (o + 1 < n && pair >= outs[o].pairs) pair -= outs[o++].pairs;
  const Output& out = outs[o];
  if (out.half > 0) {
    const int64_t head = pair / out.half, i = pair % out.half;
    ra = head * 2 * out.half + i;
    rb = ra + out.half;
  } else {
    ra = 2 * pair;
    rb = ra + 1 < out.n ? ra + 1 : -1;
  }
  return o;
}

// What the epilogue of a row pair adds for x row `lane` besides the dots and the low-rank update:
// loaded before the dots, so that their latency hides under the dots'.
struct EpilogueInputs {
  float add_a = 0.0f, add_b = 0.0f;  // Residual: the residual's elements; Bias: the bias's
  float cos = 1.0f, sin = 0.0f;      // RoPE's rotation of the pair
  bool rotate = false;
};

template <Epilogue E>
__device__ __forceinline__ EpilogueInputs epilogue_inputs(const Args& a, int oa, int64_t ra, int64_t rb, int r,
                                                          int32_t pos) {
  EpilogueInputs in;
  if (r >= a.m) return in;
  const Output& o = a.out[oa];
  if constexpr (E == Epilogue::Residual) {
    in.add_a = __bfloat162float(a.res[r * o.n + ra]);
    if (rb >= 0) in.add_b = __bfloat162float(a.res[r * o.n + rb]);
  } else if constexpr (E == Epilogue::Bias) {
    if (o.b) {
      in.add_a = __bfloat162float(o.b[ra]);
      if (rb >= 0) in.add_b = __bfloat162float(o.b[rb]);
    }
    if (o.half > 0 && pos >= 0 && pos < a.P) {  // rope_: (a, b) -> (a cos - b sin, b cos + a sin)
      const int64_t i = ra % (2 * o.half);
      in.cos = a.cos_t[int64_t(pos) * o.half + i];
      in.sin = a.sin_t[int64_t(pos) * o.half + i];
      in.rotate = true;
    }
  }
  return in;
}

// RMSNorm's weight of the 8 elements of pack v as f32.
__device__ __forceinline__ void norm_weights(const Args& a, int64_t v, float (&w)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
    w[i] = a.norm_f32 ? static_cast<const float*>(a.norm_w)[v * 8 + i]
                      : __bfloat162float(static_cast<const bf16*>(a.norm_w)[v * 8 + i]);
}

constexpr int kStageLoads = 5;   // packs of an input row a thread stages at once (K <= 5,120: one batch)
constexpr int kShrinkLoads = 4;  // packs of a shrink row a thread has in flight (K <= 4,096: one batch)

// Shrink row `row` of the concatenated A's [r_p, k]: its A (p), its row there (g) and that row.
__device__ __forceinline__ const bf16* shrink_row(const Shrinks& s, int row, int64_t k, int& p, int& g) {
  g = row;
  p = 0;
  while (p < 2 && g >= s.r[p]) g -= s.r[p++];
  return s.a[p] + int64_t(g) * k;
}
__device__ __forceinline__ void load_shrink(const bf16* arow, int64_t v0, int64_t packs, uint4 (&pa)[kShrinkLoads]) {
#pragma unroll
  for (int j = 0; j < kShrinkLoads; ++j) {
    const int64_t v = v0 + threadIdx.x + int64_t(j) * blockDim.x;
    pa[j] = v < packs ? load_stream(reinterpret_cast<const uint4*>(arow) + v) : uint4{0, 0, 0, 0};
  }
}

// The block's shrink rows against the staged input xs [m, K] (normed and rounded as the dots see
// it), each rounded to bf16 as linear rounds it; pa holds the first row's first batch (loaded
// before the wait: A is a weight). Each thread sums its packs in order, then the lanes
// (warp_sum) and the warps in order.
template <int M>
__device__ void shrink_rows(const Args& a, const bf16* xs, uint4 (&pa)[kShrinkLoads]) {
  __shared__ float part[kWarps][M];
  const int64_t k = a.k, packs = k / 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int row = blockIdx.x; row < a.sh.rows; row += a.sh.blocks) {
    int p, g;
    const bf16* arow = shrink_row(a.sh, row, k, p, g);
    if (row != int(blockIdx.x)) load_shrink(arow, 0, packs, pa);
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = 0.0f;
    for (int64_t v0 = 0; v0 < packs; v0 += int64_t(kShrinkLoads) * blockDim.x) {
      if (v0 > 0) load_shrink(arow, v0, packs, pa);
#pragma unroll
      for (int j = 0; j < kShrinkLoads; ++j) {
        const int64_t v = v0 + threadIdx.x + int64_t(j) * blockDim.x;
        if (v >= packs) break;
        float fa[8];
        unpack8(pa[j], fa);
#pragma unroll
        for (int r = 0; r < M; ++r) {
          if (r >= a.m) break;
          float fx[8];
          unpack8(reinterpret_cast<const uint4*>(xs + r * k)[v], fx);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r] = fmaf(fa[e], fx[e], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0) part[warp][r] = v;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int r = 0; r < a.m; ++r) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) v += part[w][r];
        a.sh.h[p][int64_t(r) * a.sh.r[p] + g] = __float2bfloat16_rn(v);
      }
      __threadfence();  // h before the count that publishes it
      atomicAdd(a.sh.counters, 1u);
    }
    __syncthreads();  // part is reused by the next row
  }
}

// Until every shrink row of the launch is counted (a hang would be a bug: trap after ~2 s).
__device__ __forceinline__ void wait_for_shrinks(const Shrinks& s) {
  const long long t0 = clock64();
  unsigned seen;
#pragma unroll 1
  for (;;) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(s.counters) : "memory");
    if (seen >= unsigned(s.rows)) return;
    if (clock64() - t0 > (1LL << 32)) __trap();
    __nanosleep(32);
  }
}

// The last block out zeroes the counters for the next launch (every block is past its waits).
__device__ __forceinline__ void release_shrinks(const Shrinks& s) {
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(s.counters + 1, 1u) == gridDim.x - 1) {
    s.counters[0] = 0;
    s.counters[1] = 0;
  }
}

// kShrink: the launch forms LoRA's shrinks (Args::sh); a template argument, so that the kernels
// without an update keep their registers.
template <int M, Epilogue E, bool kShrink>
__device__ __forceinline__ void fused_decode(const Args& a) {
  stamp_start(a.stamps);
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem);  // [m, k]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t k = a.k;
  const int64_t packs = k / 8;
  // Warps of a block in slots of a.parts; the warps of a slot take the same row pairs, each a part
  // of K, and meet at a named barrier (1 + slot) to sum in a fixed order.
  const int slots = kWarps / a.parts, slot = warp / a.parts, part = warp % a.parts;
  const int64_t chunk = (packs + a.parts - 1) / a.parts;
  const int64_t part_begin = part * chunk < packs ? part * chunk : packs;
  const int64_t part_end = part_begin + chunk < packs ? part_begin + chunk : packs;
  // The row pairs go to the blocks after the shrinks' (kShrink), which take none.
  const bool shrinker = kShrink && int(blockIdx.x) < a.sh.blocks;
  const int pair_block = kShrink ? int(blockIdx.x) - a.sh.blocks : int(blockIdx.x);
  const int64_t stride = static_cast<int64_t>(gridDim.x - (kShrink ? a.sh.blocks : 0)) * slots;
  const int64_t first = shrinker ? a.pairs : static_cast<int64_t>(pair_block) * slots + slot;
  // A warp's row pair: its weight rows and where its outputs go.
  struct PairRows {
    const bf16 *wa = nullptr, *wb = nullptr;
    int64_t ra = 0, rb = -1;
    int oa = 0;
  };
  auto rows_for = [&](int64_t pair) {
    PairRows q;
    if constexpr (E == Epilogue::SwiGlu) {
      q.ra = pair;
      q.wa = a.out[0].w + q.ra * k;
      q.wb = a.out[1].w + q.ra * k;
    } else {
      q.oa = rows_of(a.out, a.outs, pair, q.ra, q.rb);
      q.wa = a.out[q.oa].w + q.ra * k;
      q.wb = q.rb >= 0 ? a.out[q.oa].w + q.rb * k : nullptr;
    }
    return q;
  };
  // The warp's first pair: its first batch of loads goes out before the staging below. With
  // SwiGLU (gate/up: the one projection with more pairs than warps) each later pair's first batch
  // goes out before the pair ahead of it is dotted (na, nb): two pairs in flight, so a warp waits
  // one memory latency per pair, not two. (The other kernels keep their registers: a pair a warp.)
  constexpr bool kAhead = E == Epilogue::SwiGlu;
  constexpr int U = loads_per_lane(E, M);
  PairRows cur, next;
  uint4 ua[U], ub[U], na[U], nb[U];
  // Launched as a dependent (dependent_launch.cuh): weights before the wait, x after it. A block
  // with a shrink row loads that first; its pairs' loads wait until the row is done.
  uint4 pa[kShrinkLoads];
  if (shrinker) {
    int p, g;
    load_shrink(shrink_row(a.sh, blockIdx.x, k, p, g), 0, packs, pa);
  } else if (first < a.pairs) {
    cur = rows_for(first);
    load_batch(cur.wa, cur.wb, part_begin + lane, part_end, ua, ub);
  }
  float nw[8];  // the norm's weights of the thread's first staged pack
  if (a.norm_w && threadIdx.x < packs) norm_weights(a, threadIdx.x, nw);
  wait_for_prior_grids();
  stamp_wait(a.stamps);
  allow_dependents();
  // Inputs of the epilogue, ahead of the staging: the row's position and pool slot, and the first
  // pair's residual or bias.
  const int32_t row_pos = lane < a.m && a.pos ? a.pos[lane] : -1;
  const int32_t row_slot = lane < a.m && a.slots ? a.slots[lane] : -1;
  EpilogueInputs in;
  if (first < a.pairs) in = epilogue_inputs<E>(a, cur.oa, cur.ra, cur.rb, lane, -1);
  // The rows into shared memory as they are, with their sums of squares (rmsnorm's: a thread's
  // packs, then its warp's, then the warps' in order); a thread's loads of a row go out together,
  // so that the staging waits about one memory latency, not one a pack or one for rstd and another
  // for the staging. Then each thread normalizes the packs it staged, in place.
  __shared__ float sums[kWarps][kMaxRows];
  for (int r = 0; r < a.m; ++r) {
    const uint4* xr = reinterpret_cast<const uint4*>(a.x + r * k);
    uint4* sr = reinterpret_cast<uint4*>(xs + r * k);
    float ss = 0.0f;
    for (int64_t v0 = threadIdx.x; v0 < packs; v0 += int64_t(kStageLoads) * blockDim.x) {
      uint4 u[kStageLoads];
#pragma unroll
      for (int j = 0; j < kStageLoads; ++j) {
        const int64_t v = v0 + int64_t(j) * blockDim.x;
        u[j] = v < packs ? xr[v] : uint4{0, 0, 0, 0};
      }
#pragma unroll
      for (int j = 0; j < kStageLoads; ++j) {
        const int64_t v = v0 + int64_t(j) * blockDim.x;
        if (v >= packs) break;
        sr[v] = u[j];
        if (a.norm_w) {
          float f[8];
          unpack8(u[j], f);
#pragma unroll
          for (int i = 0; i < 8; ++i) ss += f[i] * f[i];
        }
      }
    }
    if (a.norm_w) {
      ss = warp_sum(ss);
      if (lane == 0) sums[warp][r] = ss;
    }
  }
  if (a.norm_w) {
    __syncthreads();
    for (int r = 0; r < a.m; ++r) {
      float ss = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) ss += sums[w][r];
      const float rs = rsqrtf(ss / static_cast<float>(k) + a.eps);
      uint4* sr = reinterpret_cast<uint4*>(xs + r * k);
      for (int64_t v = threadIdx.x; v < packs; v += blockDim.x) {
        float f[8], w[8];
        unpack8(sr[v], f);
        if (v == threadIdx.x) {
#pragma unroll
          for (int i = 0; i < 8; ++i) w[i] = nw[i];
        } else {
          norm_weights(a, v, w);
        }
        uint4 packed;
        __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
        for (int i = 0; i < 8; i += 2) out[i / 2] = __floats2bfloat162_rn(f[i] * rs * w[i], f[i + 1] * rs * w[i + 1]);
        sr[v] = packed;
      }
    }
  }
  __syncthreads();
  stamp_mid(a.stamps);
  if (kShrink && shrinker) shrink_rows<M>(a, xs, pa);
  bool shrinks_seen = !kShrink;

  for (int64_t pair = first; pair < a.pairs; pair += stride) {
    if (pair != first) {
      if constexpr (kAhead) {
        cur = next;
#pragma unroll
        for (int u = 0; u < U; ++u) ua[u] = na[u], ub[u] = nb[u];
      } else {
        cur = rows_for(pair);
        load_batch(cur.wa, cur.wb, part_begin + lane, part_end, ua, ub);
      }
    }
    if (kAhead && pair + stride < a.pairs) {
      next = rows_for(pair + stride);
      load_batch(next.wa, next.wb, part_begin + lane, part_end, na, nb);
    }
    const int64_t ra = cur.ra, rb = cur.rb;
    const int oa = cur.oa;
    if (E != Epilogue::SwiGlu && (pair != first || row_pos >= 0)) in = epilogue_inputs<E>(a, oa, ra, rb, lane, row_pos);
    float ya[M], yb[M];
    dot_rows<M, U>(xs, k, a.m, part_begin, part_end, cur.wa, cur.wb, ua, ub, ya, yb);
    if (a.parts > 1) {  // part 0 adds the other parts' sums, in order
      __shared__ float partial[kWarps][2][M];
      if (lane == 0)
#pragma unroll
        for (int r = 0; r < M; ++r) {
          partial[warp][0][r] = ya[r];
          partial[warp][1][r] = yb[r];
        }
      asm volatile("bar.sync %0, %1;" ::"r"(1 + slot), "r"(a.parts * 32) : "memory");
      if (part == 0)
        for (int p = 1; p < a.parts; ++p)
#pragma unroll
          for (int r = 0; r < M; ++r) {
            ya[r] += partial[warp + p][0][r];
            yb[r] += partial[warp + p][1][r];
          }
      asm volatile("bar.sync %0, %1;" ::"r"(1 + slot), "r"(a.parts * 32) : "memory");  // partial reused next
      if (part != 0) continue;
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
      if (r >= a.m || lane != r) continue;
      if (!shrinks_seen) {
        wait_for_shrinks(a.sh);
        shrinks_seen = true;
      }
      if constexpr (E == Epilogue::SwiGlu) {  // a: gate row, b: up row
        const Output& g = a.out[0];
        const float gv = with_update<false>(g, r, ra, round_bf16(ya[r])),
                    uv = with_update<false>(a.out[1], r, ra, round_bf16(yb[r]));
        g.y[r * g.n + ra] = __float2bfloat16_rn(gv / (1.0f + expf(-gv)) * uv);
        continue;
      }
      const Output& o = a.out[oa];
      float va = round_bf16(ya[r]), vb = round_bf16(yb[r]);
      if constexpr (E == Epilogue::Bias) {
        if (o.b) {
          va = round_bf16(va + in.add_a);
          if (rb >= 0) vb = round_bf16(vb + in.add_b);
        }
        va = with_update(o, r, ra, va);
        if (rb >= 0) vb = with_update(o, r, rb, vb);
        if (in.rotate) {  // rope_: (a, b) -> (a cos - b sin, b cos + a sin)
          const float rot_a = va * in.cos - vb * in.sin, rot_b = vb * in.cos + va * in.sin;
          va = rot_a;
          vb = rot_b;
        }
      } else {
        va = with_update(o, r, ra, va) + in.add_a;
        if (rb >= 0) vb = with_update(o, r, rb, vb) + in.add_b;
      }
      o.y[r * o.n + ra] = __float2bfloat16_rn(va);
      if (rb >= 0) o.y[r * o.n + rb] = __float2bfloat16_rn(vb);
      if constexpr (E == Epilogue::Bias) {
        const int64_t slot = o.pool ? row_slot : -1;
        if (slot >= 0 && slot < a.pool_rows) {  // paged_kv_write_'s copy of the row
          o.pool[slot * o.n + ra] = __float2bfloat16_rn(va);
          if (rb >= 0) o.pool[slot * o.n + rb] = __float2bfloat16_rn(vb);
        }
      }
    }
  }
  if constexpr (kShrink) release_shrinks(a.sh);
  stamp_end(a.stamps);
}

template <int M, Epilogue E>
__global__ void __launch_bounds__(kWarps * 32) fused_decode_kernel(Args a) {
  fused_decode<M, E, false>(a);
}

// With the shrinks at most 128 registers, four blocks an SM, as without (SwiGLU's would take 162:
// three blocks).
template <int M, Epilogue E>
__global__ void __launch_bounds__(kWarps * 32, 4) fused_decode_shrink_kernel(Args a) {
  fused_decode<M, E, true>(a);
}

template <int M, Epilogue E, bool kShrink>
void launch_rows(const Args& a, Device d) {
  const int64_t smem = a.m * a.k * 2;
  auto kernel = kShrink ? fused_decode_shrink_kernel<M, E> : fused_decode_kernel<M, E>;
  stream_for(d);  // makes d current
  // Set on the current device at each such launch (as attention.cu does): a once-only flag would
  // miss the other GPUs of a process.
  if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  Args args = a;
  // Blocks stage x each: as many per SM as shared memory allows, up to 8, and no more than are
  // resident at once (a second, partial wave only adds a tail: +4% one stream on Llama-3-8B).
  int resident = 0;
  LR_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kWarps * 32, static_cast<size_t>(smem)));
  const int per_sm = static_cast<int>(
      std::clamp<int64_t>((200 * 1024) / std::max<int64_t>(smem, 1), 1, std::clamp(resident, 1, 8)));
  // K split over 2 or 4 warps a pair while the pairs leave most resident warps idle and each part
  // keeps at least one full batch of loads: a warp's batches are a serial chain of memory
  // latencies (Qwen-0.5B's down projection: 448 pairs, 4 batches each of 5 loads a lane, on 3,696
  // warp slots).
  const int64_t warp_slots = int64_t(per_sm) * multiprocessor_count(d) * kWarps;
  constexpr int U = loads_per_lane(E, M);
  const int64_t batches = (a.k / 8 + 32 * U - 1) / (32 * U);
  static const bool split_k = [] {  // LOWRANK_DECODE_SPLIT_K=0: a warp per pair through the whole K (A/B)
    const char* v = std::getenv("LOWRANK_DECODE_SPLIT_K");
    return !(v && std::string_view(v) == "0");
  }();
  args.parts = 1;
  while (split_k && args.parts < kWarps && a.pairs * args.parts * 2 <= warp_slots && batches >= args.parts * 2)
    args.parts *= 2;
  const int slots = kWarps / args.parts;
  // A launch that streams more weights than kDependentMaxBytes is not a programmatic dependent:
  // its blocks, starting beside the small kernel before it, would displace some of its own one
  // wave into a second (Llama-3-8B one stream with an adapter, all dependent: 175 -> 159 tok/s).
  const bool dependent = 4 * a.pairs * a.k <= kDependentMaxBytes;
  // With the shrinks: a block a shrink row first (at most a quarter of the resident blocks), then
  // the pairs' blocks, all resident at once (their epilogues wait for the shrink blocks).
  const int64_t resident_blocks = int64_t(per_sm) * multiprocessor_count(d);
  args.sh.blocks = kShrink ? static_cast<int>(std::clamp<int64_t>(a.sh.rows, 1, std::max<int64_t>(resident_blocks / 4, 1))) : 0;
  const int64_t blocks = args.sh.blocks + std::max<int64_t>(
      1, std::min<int64_t>((a.pairs + slots - 1) / slots, resident_blocks - args.sh.blocks));
  args.stamps = next_launch_stamps(d, E == Epilogue::SwiGlu ? "norm_swiglu" : E == Epilogue::Bias ? "norm_linears" : "linear_residual", blocks);
  launch_kernel(dependent, kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), static_cast<size_t>(smem), d,
                args);
}

template <Epilogue E, bool kShrink>
void launch_m(const Args& a, Device d) {
  if (a.m <= 1) launch_rows<1, E, kShrink>(a, d);
  else if (a.m <= 2) launch_rows<2, E, kShrink>(a, d);
  else if (a.m <= 4) launch_rows<4, E, kShrink>(a, d);
  else launch_rows<8, E, kShrink>(a, d);
}

template <Epilogue E>
void launch(const Args& a, Device d) {
  if (a.sh.rows > 0) launch_m<E, true>(a, d);
  else launch_m<E, false>(a, d);
}

// Whether the fused kernels take x [M, K] with these weights.
bool fusable(const Tensor& x, std::initializer_list<const Tensor*> ws) {
  if (x.dtype() != DType::BF16 || x.rank() != 2 || x.dim(0) < 1 || x.dim(0) > kMaxRows) return false;
  const int64_t k = x.dim(1);
  if (k % 8 != 0 || x.dim(0) * k * 2 > kMaxSharedBytes || !aligned16(x.raw())) return false;
  for (const Tensor* w : ws)
    if (w->dtype() != DType::BF16 || w->rank() != 2 || w->dim(1) != k || !aligned16(w->raw()) ||
        !(w->device() == x.device()))
      return false;
  return true;
}

// Whether the kernels take these low-rank updates (bf16 A and B, A as wide as x, at most 3).
bool fusable(const Tensor& x, const std::vector<LowRankUpdate>& updates) {
  for (const LowRankUpdate& u : updates)
    if (u.A.defined() && !(u.B.dtype() == DType::BF16 && fusable(x, {&u.A}))) return false;
  return updates.size() <= 3;
}

// Output o's update from updates[i], when there is one: its shrink joins a.sh (into a new h [M, r]
// kept in hs until the launch is queued), its expand goes into o's epilogue.
void set_update(Args& a, Output& o, const std::vector<LowRankUpdate>& updates, size_t i, std::vector<Tensor>& hs) {
  if (i >= updates.size() || !updates[i].A.defined()) return;
  const LowRankUpdate& u = updates[i];
  const int r = static_cast<int>(u.A.dim(0));
  Shrinks& sh = a.sh;
  int n = 0;
  while (n < 3 && sh.a[n]) ++n;
  hs.push_back(Tensor::empty({a.m, r}, DType::BF16, u.A.device()));
  sh.a[n] = u.A.data<bf16>();
  sh.h[n] = hs.back().data<bf16>();
  sh.r[n] = r;
  sh.rows += r;
  sh.counters = context(u.A.device()).grid_counters;
  o.lb = u.B.data<bf16>();
  o.lh = hs.back().data<bf16>();
  o.lr = r;
  o.ls = u.scale;
  o.packed = r % 8 == 0 && aligned16(o.lb) && aligned16(o.lh);
}

// The unfused ops' way: y = scale · (xn Aᵀ) Bᵀ + y for output i's update.
void add_update(const std::vector<LowRankUpdate>& updates, size_t i, const Tensor& xn, Tensor& y) {
  if (i >= updates.size() || !updates[i].A.defined()) return;
  const LowRankUpdate& u = updates[i];
  matmul_nt(linear(xn, u.A, Tensor()), u.B, y, u.scale, 1.0f);
}

Args norm_args(const Tensor& x, const Tensor& norm_w, float eps) {
  Args a{};
  a.x = x.data<bf16>();
  a.m = static_cast<int>(x.dim(0));
  a.k = x.dim(1);
  a.norm_w = norm_w.raw();
  a.norm_f32 = norm_w.dtype() == DType::F32;
  a.eps = eps;
  return a;
}

}  // namespace

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope,
                                 const std::vector<LowRankUpdate>& updates, const KVWrite* kv) {
  check_arg(x, "norm_linears", "x");
  check_arg(norm_w, "norm_linears", "norm_w");
  LR_CHECK(!ws.empty() && ws.size() <= 3 && bs.size() == ws.size(), "norm_linears: ", ws.size(), " weights, ",
           bs.size(), " biases");
  bool fast = fusable(x, {}) && fusable(x, updates) && norm_w.numel() == x.dim(1) &&
              (norm_w.dtype() == DType::F32 || norm_w.dtype() == DType::BF16);
  for (size_t i = 0; i < ws.size(); ++i) {
    fast = fast && fusable(x, {&ws[i]}) && (!bs[i].defined() || (bs[i].dtype() == DType::BF16 && bs[i].numel() == ws[i].dim(0)));
    if (rope && rope->heads[i] > 0)  // whole heads, no partial rotary
      fast = fast && ws[i].dim(0) % (2 * rope->heads[i]) == 0 && rope->cos.rank() == 2 &&
             2 * rope->cos.dim(1) * rope->heads[i] == ws[i].dim(0) && rope->cos.dtype() == DType::F32 &&
             rope->sin.shape() == rope->cos.shape() && rope->sin.dtype() == DType::F32 &&
             rope->pos.dtype() == DType::I32 && rope->pos.numel() == x.dim(0);
  }
  std::vector<Tensor> ys;
  if (!fast) {
    const Tensor xn = rmsnorm(x, norm_w, eps);
    for (size_t i = 0; i < ws.size(); ++i) {
      ys.push_back(linear(xn, ws[i], bs[i]));
      add_update(updates, i, xn, ys[i]);
      if (rope && rope->heads[i] > 0) rope_(ys[i], rope->heads[i], rope->pos, rope->cos, rope->sin, false);
    }
    if (kv) {
      Tensor k_pool = kv->k_pool, v_pool = kv->v_pool;
      paged_kv_write_(k_pool, v_pool, ys[1], ys[2], kv->slots);
    }
    return ys;
  }
  Args a = norm_args(x, norm_w, eps);
  std::vector<Tensor> hs;
  for (size_t i = 0; i < ws.size(); ++i) {
    ys.push_back(Tensor::empty({x.dim(0), ws[i].dim(0)}, DType::BF16, x.device()));
    const int64_t n = ws[i].dim(0);
    const int half = rope && rope->heads[i] > 0 ? static_cast<int>(rope->cos.dim(1)) : 0;
    a.out[i] = {ws[i].data<bf16>(), bs[i].defined() ? bs[i].data<bf16>() : nullptr, ys[i].data<bf16>(), n,
                (n + 1) / 2, half};
    set_update(a, a.out[i], updates, i, hs);
    a.pairs += a.out[i].pairs;
  }
  a.outs = static_cast<int>(ws.size());
  if (kv) {  // k and v also into their pool rows (the dispatch checked the shapes)
    a.out[1].pool = const_cast<bf16*>(kv->k_pool.data<bf16>());
    a.out[2].pool = const_cast<bf16*>(kv->v_pool.data<bf16>());
    a.slots = kv->slots.data<int32_t>();
    a.pool_rows = kv->k_pool.dim(0);
  }
  if (rope) {
    a.pos = rope->pos.data<int32_t>();
    a.cos_t = rope->cos.data<float>();
    a.sin_t = rope->sin.data<float>();
    a.P = rope->cos.dim(0);
  }
  launch<Epilogue::Bias>(a, x.device());
  return ys;
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up,
                   const std::vector<LowRankUpdate>& updates) {
  check_arg(x, "norm_swiglu", "x");
  check_arg(norm_w, "norm_swiglu", "norm_w");
  LR_CHECK(w_gate.shape() == w_up.shape(), "norm_swiglu: gate ", w_gate.str(), ", up ", w_up.str());
  if (!fusable(x, {&w_gate, &w_up}) || !fusable(x, updates) || norm_w.numel() != x.dim(1) ||
      !(norm_w.dtype() == DType::F32 || norm_w.dtype() == DType::BF16)) {
    const Tensor xn = rmsnorm(x, norm_w, eps);
    Tensor gate = linear(xn, w_gate, Tensor()), up = linear(xn, w_up, Tensor());
    add_update(updates, 0, xn, gate);
    add_update(updates, 1, xn, up);
    return swiglu(gate, up);
  }
  Tensor y = Tensor::empty({x.dim(0), w_gate.dim(0)}, DType::BF16, x.device());
  Args a = norm_args(x, norm_w, eps);
  std::vector<Tensor> hs;
  a.out[0] = {w_gate.data<bf16>(), nullptr, y.data<bf16>(), w_gate.dim(0)};
  a.out[1] = {w_up.data<bf16>(), nullptr, nullptr, w_up.dim(0)};
  set_update(a, a.out[0], updates, 0, hs);
  set_update(a, a.out[1], updates, 1, hs);
  a.outs = 2;
  a.pairs = w_gate.dim(0);
  launch<Epilogue::SwiGlu>(a, x.device());
  return y;
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  check_arg(x, "linear_residual", "x");
  check_arg(res, "linear_residual", "res");
  if (!fusable(x, {&w}) || !fusable(x, updates) || res.dtype() != DType::BF16 || res.rank() != 2 ||
      res.dim(0) != x.dim(0) || res.dim(1) != w.dim(0)) {
    Tensor y = linear(x, w, Tensor());
    add_update(updates, 0, x, y);
    add_(y, res);
    return y;
  }
  Tensor y = Tensor::empty({x.dim(0), w.dim(0)}, DType::BF16, x.device());
  Args a{};
  a.x = x.data<bf16>();
  a.m = static_cast<int>(x.dim(0));
  a.k = x.dim(1);
  a.out[0] = {w.data<bf16>(), nullptr, y.data<bf16>(), w.dim(0), (w.dim(0) + 1) / 2, 0};
  std::vector<Tensor> hs;
  set_update(a, a.out[0], updates, 0, hs);
  a.outs = 1;
  a.pairs = a.out[0].pairs;
  a.res = res.data<bf16>();
  launch<Epilogue::Residual>(a, x.device());
  return y;
}

}  // namespace lowrank::cuda
