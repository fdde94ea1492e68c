// The paged KV cache on CUDA (vLLM's layout, see ops.h): writing new K/V rows into the pools, and
// decode attention for many sequences of different lengths in one launch.
//
// Decode attention: one block per (split of the key range, KV head [× chunk of its query heads],
// sequence). The block's query heads share their KV head (GQA), so each tile of 32 keys is read
// from the pools once for the whole group: the block gathers the tile's pool rows through the
// block table, stages K and V in shared memory (f32), and every warp runs the online softmax of
// its query heads over the tile (one lane per key for the scores, one lane per 32nd column of the
// head for P·V), as the generic training kernel (attention.cu) does for a query row.
// Split-K: when the batch has too few (sequence, head) pairs to fill the GPU, the visible key range
// of every sequence is cut into `splits` pieces that run in parallel; each writes its normalised
// output and log-sum-exp, and a second kernel merges them (out = Σ_s e^{lse_s - M} o_s / Σ_s e^{lse_s - M}).
// Short contexts (up to kShortMaxTiles tiles) that would be split 2-4 ways take one block per (KV
// head, sequence) whose warps share the tiles and merge in shared memory instead
// (paged_decode_short_kernel).
#include <algorithm>
#include <cooperative_groups.h>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "context.h"
#include "dependent_launch.cuh"
#include "launch_trace.cuh"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int kTile = 32;          // keys per tile: one per lane
constexpr int kMaxWarps = 8;       // per block: a warp per query head of a GQA group up to 8 (Qwen-0.5B: 7)
constexpr int kHeadsPerWarp = 4;   // query heads a warp carries (registers: kHeadsPerWarp × kMaxChunks)
constexpr int kMaxChunks = 8;      // head_dim <= 32 * kMaxChunks
constexpr int kMaxHeadsPerBlock = kMaxWarps * kHeadsPerWarp;

struct PagedDims {
  int H, KV, hd, group;
  int heads_per_block, head_chunks;  // query heads of a group per block; blocks per group
  int block_size, max_blocks;
  int split_len, splits;             // keys per split (a multiple of kTile); splits per sequence
  int window;                        // 0: full causal
  float scale, softcap;
};

// grid (splits, KV * head_chunks, B), block 32 * warps.
template <typename T>
__global__ void __launch_bounds__(kMaxWarps * 32)
paged_decode_kernel(const T* __restrict__ q, const T* __restrict__ k_pool, const T* __restrict__ v_pool,
                    const int32_t* __restrict__ tables, const int32_t* __restrict__ lens, T* __restrict__ out,
                    float* __restrict__ part_o, float* __restrict__ part_lse, PagedDims s) {
  extern __shared__ float smem[];
  const int hd = s.hd, ldk = hd + 1;
  long long* rows_s = reinterpret_cast<long long*>(smem);  // [kTile] pool rows of the tile (-1: none)
  float* q_s = smem + 2 * kTile;                            // [heads_per_block][hd], scale folded in
  float* k_s = q_s + s.heads_per_block * hd;                // [kTile][hd + 1] (padded: lane j reads row j)
  float* v_s = k_s + kTile * ldk;                           // [kTile][hd]
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int split = blockIdx.x, b = blockIdx.z;
  const int kvh = blockIdx.y / s.head_chunks, chunk = blockIdx.y % s.head_chunks;
  const int h0 = kvh * s.group + chunk * s.heads_per_block;  // first query head of the block
  const int heads = min(s.heads_per_block, s.group - chunk * s.heads_per_block);
  allow_dependents();  // see paged_attention()
  const int len = lens[b];
  const int pos = len - 1;
  const int begin = s.window > 0 ? max(0, pos - s.window + 1) : 0;
  const int k0 = begin + split * s.split_len, k1 = min(len, k0 + s.split_len);
  const int64_t kv_stride = int64_t(s.KV) * hd;
  const int32_t* table = tables + int64_t(b) * s.max_blocks;

  const T* qb = q + (int64_t(b) * s.H + h0) * hd;
  for (int e = threadIdx.x; e < heads * hd; e += blockDim.x) q_s[e] = to_f32(qb[e]) * s.scale;

  WarpHeads<kHeadsPerWarp, kMaxChunks> st;
  for (int t0 = k0; t0 < k1; t0 += kTile) {
    const int n = min(kTile, k1 - t0);  // keys in this tile
    __syncthreads();                    // the previous tile is used up (and q_s written, first time)
    if (threadIdx.x < kTile) {
      const int j = t0 + threadIdx.x;
      rows_s[threadIdx.x] = threadIdx.x < n ? int64_t(table[j / s.block_size]) * s.block_size + j % s.block_size : -1;
    }
    __syncthreads();
    if (std::is_same_v<T, bf16> && hd % 8 == 0) {  // 16-byte loads, 8 elements a thread
      const int per_row = hd / 8;
      for (int e = threadIdx.x; e < kTile * per_row; e += blockDim.x) {
        const int r = e / per_row, c = (e - r * per_row) * 8;
        const long long row = rows_s[r];
        uint4 kp{0, 0, 0, 0}, vp{0, 0, 0, 0};
        if (row >= 0) {
          const int64_t at = row * kv_stride + int64_t(kvh) * hd + c;
          kp = *reinterpret_cast<const uint4*>(k_pool + at);
          vp = *reinterpret_cast<const uint4*>(v_pool + at);
        }
        const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kp);
        const __nv_bfloat162* v2 = reinterpret_cast<const __nv_bfloat162*>(&vp);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 kf = __bfloat1622float2(k2[i]), vf = __bfloat1622float2(v2[i]);
          k_s[r * ldk + c + 2 * i] = kf.x;
          k_s[r * ldk + c + 2 * i + 1] = kf.y;
          v_s[r * hd + c + 2 * i] = vf.x;
          v_s[r * hd + c + 2 * i + 1] = vf.y;
        }
      }
    } else {
      for (int e = threadIdx.x; e < kTile * hd; e += blockDim.x) {
        const int r = e / hd, c = e - r * hd;
        const long long row = rows_s[r];
        const int64_t at = row * kv_stride + int64_t(kvh) * hd + c;
        k_s[r * ldk + c] = row >= 0 ? to_f32(k_pool[at]) : 0.0f;
        v_s[r * hd + c] = row >= 0 ? to_f32(v_pool[at]) : 0.0f;
      }
    }
    __syncthreads();
    st.fold(q_s, hd, warp, warps, heads, k_s, ldk, v_s, n, s.softcap);
  }
  const int64_t bh0 = int64_t(b) * s.H + h0;  // the block's first (sequence, head)
  if (s.splits == 1)
    st.write(hd, warp, warps, heads, [&](int hl, int c, float v) { out[(bh0 + hl) * hd + c] = from_f32<T>(v); },
             [](int, float) {});
  else
    st.write(hd, warp, warps, heads,
             [&](int hl, int c, float v) { part_o[((bh0 + hl) * s.splits + split) * hd + c] = v; },
             [&](int hl, float lse) { part_lse[(bh0 + hl) * s.splits + split] = lse; });
}

// Short contexts that would otherwise be split a few ways over blocks (batches of tens of
// sequences): one block per (KV head [× chunk of its query heads], sequence) whose warps take the
// tiles of 32 keys in turn and merge their partial softmaxes in shared memory at the end, so that
// no second kernel is launched (decode steps are chains of short kernels: a launch costs more than
// the merge). bf16, head_dim a multiple of 8 up to 128, at most kShortHeads query heads per block.
// Each lane owns a key of its warp's tile: it loads the key's K and V rows with 16-byte loads, all
// issued before use (K into registers, V into the warp's shared tile); its K row against every
// head's q gives the scores; P·V broadcasts each key's probabilities across the warp, one lane per
// 32nd column of the head.
constexpr int kShortMaxWarps = 8;   // 256 threads: registers for every head's state
constexpr int kShortMaxTiles = 16;  // contexts up to 512 keys (a warp takes two tiles above 256)
constexpr int kShortHeads = 8;
constexpr int kShortChunks = 4;     // head_dim <= 32 * kShortChunks
constexpr int kShortWords = 8;      // 16-byte words of a K row loaded at once (head_dim 64: all)
constexpr int kShortMaxSplits = 4;  // used in place of up to this many splits

// Shared memory of short_decode (floats, the warps' V tiles included).
__host__ __device__ constexpr size_t short_smem_floats(int heads_per_block, int warps, int hd) {
  return size_t(heads_per_block) * hd + size_t(warps) * kShortHeads * (2 + size_t(hd)) + size_t(warps) * kTile * hd / 2;
}

// The pool row of key j of a sequence (its block table `table`).
__device__ __forceinline__ int table_slot(const int32_t* __restrict__ table, int block_size, int j) {
  return table[j / block_size] * block_size + j % block_size;
}

// A short kernel block's work: query heads [h0, h0 + heads) of sequence b (KV head kvh) over the
// sequence's keys; write(h, d, value) takes each output element (f32, before its rounding).
template <typename Write>
__device__ __forceinline__ void short_decode(const bf16* __restrict__ q, const bf16* __restrict__ k_pool,
                                             const bf16* __restrict__ v_pool, const int32_t* __restrict__ tables,
                                             const int32_t* __restrict__ lens, const PagedDims& s, int b, int kvh,
                                             int h0, int heads, float* smem, Write write) {
  const int hd = s.hd, words = hd / 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float* q_s = smem;                                   // [heads_per_block][hd], scale folded in
  float* part_m = q_s + s.heads_per_block * hd;        // [warps][kShortHeads]
  float* part_l = part_m + warps * kShortHeads;        // [warps][kShortHeads]
  float* part_o = part_l + warps * kShortHeads;        // [warps][kShortHeads][hd]
  uint4* v_s = reinterpret_cast<uint4*>(part_o + warps * kShortHeads * hd) + warp * kTile * words;  // the warp's [kTile][hd] bf16
  const bf16* v_tile = reinterpret_cast<const bf16*>(v_s);
  const int len = lens[b], pos = len - 1;
  const int begin = s.window > 0 ? max(0, pos - s.window + 1) : 0;
  const int64_t kv_stride = int64_t(s.KV) * hd;
  const int32_t* table = tables + int64_t(b) * s.max_blocks;
  const bf16* qb = q + (int64_t(b) * s.H + h0) * hd;
  for (int e = threadIdx.x; e < heads * hd; e += blockDim.x) q_s[e] = to_f32(qb[e]) * s.scale;
  __syncthreads();

  float m[kShortHeads], l[kShortHeads], o[kShortHeads][kShortChunks];
#pragma unroll
  for (int h = 0; h < kShortHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int c = 0; c < kShortChunks; ++c) o[h][c] = 0.0f;
  }
  for (int t0 = begin + warp * kTile; t0 < len; t0 += warps * kTile) {
    const int n = min(kTile, len - t0);
    const int j = t0 + lane;
    float sc[kShortHeads];
#pragma unroll
    for (int h = 0; h < kShortHeads; ++h) sc[h] = 0.0f;
    __syncwarp();  // the previous tile's V is used up
    if (lane < n) {
      const int64_t at = (int64_t(table[j / s.block_size]) * s.block_size + j % s.block_size) * kv_stride + int64_t(kvh) * hd;
      const uint4* kr = reinterpret_cast<const uint4*>(k_pool + at);
      const uint4* vr = reinterpret_cast<const uint4*>(v_pool + at);
      for (int base = 0; base < words; base += kShortWords) {
        uint4 kw[kShortWords], vw[kShortWords];
#pragma unroll
        for (int w = 0; w < kShortWords; ++w) {
          kw[w] = base + w < words ? kr[base + w] : uint4{0, 0, 0, 0};
          vw[w] = base + w < words ? vr[base + w] : uint4{0, 0, 0, 0};
        }
#pragma unroll
        for (int w = 0; w < kShortWords; ++w)
          if (base + w < words) v_s[lane * words + base + w] = vw[w];
#pragma unroll
        for (int w = 0; w < kShortWords; ++w) {
          if (base + w >= words) break;
          const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kw[w]);
          float kf[8];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(k2[i]);
            kf[2 * i] = f.x;
            kf[2 * i + 1] = f.y;
          }
#pragma unroll
          for (int h = 0; h < kShortHeads; ++h) {
            if (h >= heads) break;
            const float* qh = q_s + h * hd + 8 * (base + w);
#pragma unroll
            for (int i = 0; i < 8; ++i) sc[h] += qh[i] * kf[i];
          }
        }
      }
    }
    float p[kShortHeads];
#pragma unroll
    for (int h = 0; h < kShortHeads; ++h) {
      p[h] = 0.0f;
      if (h >= heads) continue;
      const float score = lane < n ? capped(sc[h], s.softcap) : -INFINITY;
      const float m_new = fmaxf(m[h], warp_max(score));  // finite: lane 0 always holds a key
      const float corr = expf(m[h] - m_new);
      p[h] = lane < n ? expf(score - m_new) : 0.0f;
      l[h] = l[h] * corr + warp_sum(p[h]);
      m[h] = m_new;
#pragma unroll
      for (int c = 0; c < kShortChunks; ++c) o[h][c] *= corr;
    }
    __syncwarp();  // the tile's V rows are in shared memory
    for (int jj = 0; jj < n; ++jj) {
      float v[kShortChunks];
#pragma unroll
      for (int c = 0; c < kShortChunks; ++c) v[c] = lane + 32 * c < hd ? to_f32(v_tile[jj * hd + lane + 32 * c]) : 0.0f;
#pragma unroll
      for (int h = 0; h < kShortHeads; ++h) {
        if (h >= heads) break;
        const float pj = __shfl_sync(0xffffffffu, p[h], jj);
#pragma unroll
        for (int c = 0; c < kShortChunks; ++c) o[h][c] += pj * v[c];
      }
    }
  }
  // The warps' partial softmaxes (unnormalised o, its max and sum), then one merge per output.
#pragma unroll
  for (int h = 0; h < kShortHeads; ++h) {
    if (h >= heads) break;
    if (lane == 0) {
      part_m[warp * kShortHeads + h] = m[h];
      part_l[warp * kShortHeads + h] = l[h];
    }
#pragma unroll
    for (int c = 0; c < kShortChunks; ++c)
      if (lane + 32 * c < hd) part_o[(warp * kShortHeads + h) * hd + lane + 32 * c] = o[h][c];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < heads * hd; e += blockDim.x) {
    const int h = e / hd, d = e - h * hd;
    float mx = -INFINITY;
    for (int w = 0; w < warps; ++w) mx = fmaxf(mx, part_m[w * kShortHeads + h]);  // finite: warp 0 has keys
    float num = 0.0f, den = 0.0f;
    for (int w = 0; w < warps; ++w) {
      const float wt = expf(part_m[w * kShortHeads + h] - mx);  // 0 for a warp without keys (m = -inf)
      num += wt * part_o[(w * kShortHeads + h) * hd + d];
      den += wt * part_l[w * kShortHeads + h];
    }
    write(h, d, num / den);
  }
}

// One query head of one decode row over its keys (the attention with o, a block a head): as
// short_decode for one head, but each key's K and V rows are read by hd / 8 adjacent lanes, 16 bytes
// each (a load instruction covers 32 · 8 / hd whole rows instead of 32 rows' pieces: an eighth of
// the cache lines per instruction at head_dim 64, where the row-a-lane form spent most of its time
// waiting on them), and P·V is summed in registers: a lane adds its key rows' share of its 8
// columns, and the warp's key groups are added once after the last tile. RowLanes = hd / 8, a
// power of two up to 8 (head_dim 64; at 128 the rows' registers would spill).
template <int RowLanes, typename Write>
__device__ __forceinline__ void head_decode(const bf16* __restrict__ q, const bf16* __restrict__ k_pool,
                                            const bf16* __restrict__ v_pool, const int32_t* __restrict__ tables,
                                            const int32_t* __restrict__ lens, const PagedDims& s, int kvh, int h,
                                            float* smem, Write write) {
  constexpr int row_lanes = RowLanes, rows_at_once = 32 / RowLanes;  // lanes a row; rows a load instruction
  const int hd = 8 * RowLanes, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int word = lane % row_lanes, key_of_lane = lane / row_lanes;
  float* q_s = smem;                               // [hd], scale folded in
  float* part_m = q_s + hd;                        // [warps]
  float* part_l = part_m + warps;                  // [warps]
  float* part_o = part_l + warps;                  // [warps][hd]
  uint4* v_s = reinterpret_cast<uint4*>(part_o + warps * hd) + warp * kTile * RowLanes;  // the warp's [kTile][hd] bf16
  const int len = lens[0], pos = len - 1;
  const int begin = s.window > 0 ? max(0, pos - s.window + 1) : 0;
  const int64_t kv_stride = int64_t(s.KV) * hd, head_at = int64_t(kvh) * hd + word * 8;
  for (int e = threadIdx.x; e < hd; e += blockDim.x) q_s[e] = to_f32(q[int64_t(h) * hd + e]) * s.scale;
  __syncthreads();
  const float* qf = q_s + word * 8;
  float m = -INFINITY, l = 0.0f, o[8] = {};
  for (int t0 = begin + warp * kTile; t0 < len; t0 += warps * kTile) {
    const int n = min(kTile, len - t0);
    __syncwarp();  // the previous tile's V is used up
    // Lane i finds key t0 + i's pool row; each lane then loads its 16 bytes of the rows it shares.
    const int my_slot = lane < n ? table_slot(tables, s.block_size, t0 + lane) : 0;
    uint4 kw[RowLanes];  // this lane's 16 bytes of K's rows k · rows_at_once + key_of_lane
#pragma unroll
    for (int k = 0; k < RowLanes; ++k) {
      const int key = k * rows_at_once + key_of_lane;  // within the tile
      const int64_t at = int64_t(__shfl_sync(0xffffffffu, my_slot, key)) * kv_stride + head_at;
      kw[k] = key < n ? *reinterpret_cast<const uint4*>(k_pool + at) : uint4{0, 0, 0, 0};
      // V's words go to shared memory by cp.async (only this lane reads them back; zeros past n):
      // no registers held for them through the scores.
      cp_async16(v_s + k * 32 + lane, key < n ? v_pool + at : v_pool, key < n);
    }
    cp_async_commit();
    // Scores: a row's lanes add their 8 products; lane i then takes key i's score.
    float score = -INFINITY;
#pragma unroll
    for (int k = 0; k < RowLanes; ++k) {
      float f[8], d = 0.0f;
      unpack8(kw[k], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) d = fmaf(qf[e], f[e], d);
      for (int off = row_lanes / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
      const float from = __shfl_sync(0xffffffffu, d, (lane % rows_at_once) * row_lanes);
      if (lane / rows_at_once == k) score = from;
    }
    score = lane < n ? capped(score, s.softcap) : -INFINITY;
    const float m_new = fmaxf(m, warp_max(score));  // finite: lane 0 always holds a key
    const float corr = expf(m - m_new);
    const float p = lane < n ? expf(score - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
    m = m_new;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] *= corr;
    cp_async_wait<0>();
    __syncwarp();  // (a compiler barrier too: V's reads stay after the wait)
#pragma unroll
    for (int k = 0; k < RowLanes; ++k) {
      const float pk = __shfl_sync(0xffffffffu, p, k * rows_at_once + key_of_lane);
      float f[8];
      unpack8(v_s[k * 32 + lane], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = fmaf(pk, f[e], o[e]);
    }
  }
  // The warp's key groups, then the warps' partial softmaxes through shared memory.
#pragma unroll
  for (int e = 0; e < 8; ++e)
    for (int off = row_lanes; off < 32; off <<= 1) o[e] += __shfl_xor_sync(0xffffffffu, o[e], off);
  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = l;
  }
  if (lane < row_lanes)
#pragma unroll
    for (int e = 0; e < 8; ++e) part_o[warp * hd + lane * 8 + e] = o[e];
  __syncthreads();
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float mx = -INFINITY;
    for (int w = 0; w < warps; ++w) mx = fmaxf(mx, part_m[w]);  // finite: warp 0 has keys
    float num = 0.0f, den = 0.0f;
    for (int w = 0; w < warps; ++w) {
      const float wt = expf(part_m[w] - mx);  // 0 for a warp without keys (m = -inf)
      num += wt * part_o[w * hd + d];
      den += wt * part_l[w];
    }
    write(0, d, num / den);
  }
}

// grid (KV * head_chunks, B), block 32 * warps.
__global__ void __launch_bounds__(kShortMaxWarps * 32)
paged_decode_short_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k_pool, const bf16* __restrict__ v_pool,
                          const int32_t* __restrict__ tables, const int32_t* __restrict__ lens, bf16* __restrict__ out,
                          PagedDims s) {
  extern __shared__ float smem[];
  const int b = blockIdx.y, kvh = blockIdx.x / s.head_chunks, chunk = blockIdx.x % s.head_chunks;
  const int h0 = kvh * s.group + chunk * s.heads_per_block;
  const int heads = min(s.heads_per_block, s.group - chunk * s.heads_per_block);
  allow_dependents();  // see paged_attention()
  short_decode(q, k_pool, v_pool, tables, lens, s, b, kvh, h0, heads, smem, [&](int h, int d, float v) {
    out[(int64_t(b) * s.H + h0 + h) * s.hd + d] = from_f32<bf16>(v);
  });
}

// The attention of one decode row and its o projection plus the residual in one launch
// (ops::paged_attention_residual): block (h, p) runs query head h's attention (short_decode, one
// head), dots it with rows [p·rows, (p + 1)·rows) of o's weight restricted to head h's columns
// (loaded before the attention) and writes those partial sums; the last of the H blocks of part p
// (a counter) adds the heads' partials in head order, the low-rank update and the residual, rounded
// as linear_residual rounds them. One launch fewer a layer than paged_attention + linear_residual.
constexpr int kOThreads = 256;
constexpr int kOLoads = 4;      // 16-byte loads of o's weight a thread issues before the attention
constexpr int kOMaxParts = 64;  // counters in DeviceContext::grid_counters after the first two
constexpr int kOMaxRank = 64;
constexpr int kOBPacks = 2;     // B's row loaded early for ranks 8 and 16
constexpr int kOMaxTiles = 32;  // keys up to 1024: at most 4 tiles a warp, one after another

struct OProj {
  const bf16* w;          // [n, H * hd]
  const bf16* res;        // [n]
  bf16* y;                // [n]
  int64_t n;
  int rows;               // o's rows a part: min(kOLoads · kOThreads / (hd / 8), kOThreads)
  float* partial;         // [H, n] the heads' sums (scratch)
  unsigned* counters;     // [parts], zero between launches
  const bf16* a = nullptr;   // LoRA A [r, H * hd] (null: no update)
  const bf16* b = nullptr;   // LoRA B [n, r]
  int r = 0;
  bool b_packed = false;  // r a multiple of 8 up to 8 · kOBPacks, B 16-byte aligned
  float scale = 0.0f;
  float* h_partial = nullptr;  // [parts, H, r] each head's part of h = attn Aᵀ (scratch)
  LaunchStamp* stamps = nullptr;  // LOWRANK_DECODE_TRACE (launch_trace.cuh); null: off
};

// Row `row` of y from o's sum v (rounded): + scale · h Bᵀ (h in shared memory, B's row as 16-byte
// packs loaded early when b_packs > 0), rounded as matmul_nt(h, B, y, scale, 1) rounds it, then
// + the residual, as linear_residual rounds them.
__device__ __forceinline__ void finish_o_row(const OProj& o, int64_t row, float v, const float* hs,
                                             const uint4 (&bp)[kOBPacks], int b_packs, float res) {
  if (o.a) {
    float u = 0.0f;
    if (b_packs > 0) {
#pragma unroll
      for (int j = 0; j < kOBPacks; ++j) {
        if (j >= b_packs) break;
        float f[8];
        unpack8(bp[j], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) u = fmaf(hs[j * 8 + e], f[e], u);
      }
    } else {
      for (int j = 0; j < o.r; ++j) u = fmaf(hs[j], __bfloat162float(o.b[row * o.r + j]), u);
    }
    v = round_bf16(o.scale * u + v);
  }
  o.y[row] = __float2bfloat16_rn(v + res);
}

constexpr int kOClusterMaxBlocks = 16;  // blocks a cluster may have on Hopper (above 8: non-portable)

__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Σ over the cluster's first `blocks` blocks, in block order, of the float at p in each one's shared
// memory (p: an address in this block's; the same layout in every block). All loads in flight at once.
__device__ __forceinline__ float sum_over_cluster(const float* p, int blocks) {
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  float v[kOClusterMaxBlocks];
#pragma unroll
  for (int b = 0; b < kOClusterMaxBlocks; ++b) v[b] = b < blocks ? *cluster.map_shared_rank(const_cast<float*>(p), b) : 0.0f;
  float acc = 0.0f;
#pragma unroll
  for (int b = 0; b < kOClusterMaxBlocks; ++b)
    if (b < blocks) acc += v[b];
  return acc;
}

// grid (H, parts), block kOThreads. Everything that is not the attention's result (o's weight
// slice, LoRA's A slice, B's and the residual's elements for the row a thread may finish) is
// loaded before the attention, so that only the dots and the sums follow it.
// Cluster (compute capability 9.0+; grid launched with clusters of (H, 1, 1)): a part's H blocks
// are one cluster and add the heads' partial sums through distributed shared memory instead of
// global memory: each block keeps its head's sums in its shared memory, the cluster's barrier
// publishes them, and block h finishes rows [h · sub, (h + 1) · sub) of the part, reading the H
// blocks' sums of its rows (no fence, counter or second pass through L2; every block finishes a
// share instead of a part's last one finishing all). Same sums in the same order: the same bits.
template <bool Cluster>
__global__ void __launch_bounds__(kOThreads, 2)
paged_decode_o_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k_pool, const bf16* __restrict__ v_pool,
                      const int32_t* __restrict__ tables, const int32_t* __restrict__ lens, PagedDims s, OProj o,
                      int sub) {
  extern __shared__ float smem[];
  const int h = blockIdx.x, part = blockIdx.y, hd = s.hd, t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int per_row = hd / 8, per_pass = kOThreads / per_row, col = t % per_row;
  const int64_t K = int64_t(s.H) * hd, row0 = int64_t(part) * o.rows;
  stamp_start(o.stamps);
  uint4 wv[kOLoads];
#pragma unroll
  for (int k = 0; k < kOLoads; ++k) {
    const int i = t / per_row + k * per_pass;
    const int64_t row = row0 + i;
    wv[k] = i < o.rows && row < o.n ? *reinterpret_cast<const uint4*>(o.w + row * K + int64_t(h) * hd + col * 8)
                                    : uint4{0, 0, 0, 0};
  }
  float* attn = smem + short_smem_floats(1, kShortMaxWarps, hd);  // [hd], rounded as paged_attention stores it
  float* a_s = attn + hd;                                          // [r, hd]: A's columns of head h
  float* sums = a_s + o.r * hd;                                    // Cluster: [rows] head h's sums of the part's rows
  float* h_part = sums + o.rows;                                   // Cluster: [r] head h's part of h = attn Aᵀ
  for (int e = t; e < o.r * hd; e += kOThreads)
    a_s[e] = __bfloat162float(o.a[int64_t(e / hd) * K + int64_t(h) * hd + e % hd]);
  // The row this thread finishes: without clusters if its block is the part's last (parts of at
  // most kOThreads rows); with them, its block's share of the part.
  const int64_t first = Cluster ? int64_t(h) * sub : 0, my_row = row0 + first + t;
  const bool finishes = t < (Cluster ? sub : o.rows) && first + t < o.rows && my_row < o.n;
  const float res = finishes ? __bfloat162float(o.res[my_row]) : 0.0f;
  uint4 bp[kOBPacks] = {};  // B's row as 16-byte packs (ranks up to 8 · kOBPacks; other ranks load it at the end)
  const int b_packs = o.b_packed && finishes ? o.r / 8 : 0;
#pragma unroll
  for (int j = 0; j < kOBPacks; ++j)
    if (j < b_packs) bp[j] = reinterpret_cast<const uint4*>(o.b + my_row * o.r)[j];
  allow_dependents();
  const auto keep = [&](int, int d, float v) { attn[d] = round_bf16(v); };
  switch (per_row) {  // 1, 2, 4 or 8 (the host's check)
    case 1: head_decode<1>(q, k_pool, v_pool, tables, lens, s, h / s.group, h, smem, keep); break;
    case 2: head_decode<2>(q, k_pool, v_pool, tables, lens, s, h / s.group, h, smem, keep); break;
    case 4: head_decode<4>(q, k_pool, v_pool, tables, lens, s, h / s.group, h, smem, keep); break;
    default: head_decode<8>(q, k_pool, v_pool, tables, lens, s, h / s.group, h, smem, keep);
  }
  __syncthreads();
  stamp_wait(o.stamps);  // traced as this kernel's "wait": the attention's end
#pragma unroll
  for (int k = 0; k < kOLoads; ++k) {
    float f[8], acc = 0.0f;
    unpack8(wv[k], f);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(f[e], attn[col * 8 + e], acc);
    for (int off = per_row / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    const int i = t / per_row + k * per_pass;
    if (col == 0 && i < o.rows && row0 + i < o.n) {
      if (Cluster)
        sums[i] = acc;
      else
        o.partial[int64_t(h) * o.n + row0 + i] = acc;
    }
  }
  for (int j = warp; j < o.r; j += kOThreads / 32) {  // head h's part of LoRA's shrink: a warp a row of A
    float acc = 0.0f;
    for (int d = lane; d < hd; d += 32) acc = fmaf(a_s[j * hd + d], attn[d], acc);
    acc = warp_sum(acc);
    if (lane == 0) {
      if (Cluster)
        h_part[j] = acc;
      else
        o.h_partial[(int64_t(part) * s.H + h) * o.r + j] = acc;
    }
  }
  __shared__ float hs[kOMaxRank];  // h = attn Aᵀ, rounded as the shrink (a linear) rounds it
  float v = 0.0f;                  // the sum of my_row over the heads' columns
  if constexpr (Cluster) {
    cluster_arrive();  // sums and h_part published to the cluster
    cluster_wait();
    stamp_mid(o.stamps);  // traced as the end of its staging: the cluster's sums visible
    if (finishes) v = sum_over_cluster(sums + first + t, s.H);
    if (o.a && t < o.r) hs[t] = round_bf16(sum_over_cluster(h_part + t, s.H));
    cluster_arrive();  // done reading the other blocks' shared memory (each waits for it before exiting)
    __syncthreads();
  } else {
    __threadfence();  // the partials before the count that publishes them
    __syncthreads();
    __shared__ bool last;
    if (t == 0) last = atomicAdd(o.counters + part, 1u) == unsigned(s.H - 1);
    __syncthreads();
    if (!last) {
      stamp_end(o.stamps);
      return;
    }
    __threadfence();
    if (o.a && t < o.r) {
      float acc = 0.0f;
      for (int hh = 0; hh < s.H; ++hh) acc += __ldcg(o.h_partial + (int64_t(part) * s.H + hh) * o.r + t);
      hs[t] = round_bf16(acc);
    }
    __syncthreads();
    if (finishes)
      for (int hh = 0; hh < s.H; ++hh) v += __ldcg(o.partial + int64_t(hh) * o.n + my_row);
  }
  if (finishes) finish_o_row(o, my_row, round_bf16(v), hs, bp, b_packs, res);
  if constexpr (Cluster)
    cluster_wait();  // no block leaves while another may still read its shared memory
  else if (t == 0)
    o.counters[part] = 0;  // every block of the part has counted
  stamp_end(o.stamps);
}

// Merges the splits of one (sequence, head) per block: thread d owns column d.
template <typename T>
__global__ void paged_combine_kernel(const float* __restrict__ part_o, const float* __restrict__ part_lse,
                                     T* __restrict__ out, int splits, int hd) {
  const int64_t bh = blockIdx.x;
  allow_dependents();  // see paged_attention()
  const float* lse = part_lse + bh * splits;
  float mx = -INFINITY;
  for (int i = 0; i < splits; ++i) mx = fmaxf(mx, lse[i]);  // finite: split 0 always has keys
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int i = 0; i < splits; ++i) {
      const float w = expf(lse[i] - mx);  // 0 for empty splits (lse = -inf)
      num += w * part_o[(bh * splits + i) * hd + d];
      den += w;
    }
    out[bh * hd + d] = from_f32<T>(num / den);
  }
}

template <typename T>
__global__ void paged_kv_write_kernel(T* __restrict__ k_pool, T* __restrict__ v_pool, const T* __restrict__ k,
                                      const T* __restrict__ v, const int32_t* __restrict__ slots, int64_t n,
                                      int64_t width, int64_t pool_rows) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n * width; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e - r * width;
    const int64_t slot = slots[r];
    if (slot < 0 || slot >= pool_rows) continue;  // -1: a padding row; others validated by the caller
    k_pool[slot * width + c] = k[e];
    v_pool[slot * width + c] = v[e];
  }
}

// The first maximum of v[begin, end) (ind[i] its index, or i itself when ind is null) over one
// block: each thread keeps the first maximum of its stride (only a strictly larger value moves it,
// indices ascend), then the block reduces, preferring the smaller index on ties.
__device__ void block_argmax(const float* __restrict__ v, const int32_t* __restrict__ ind, int64_t begin, int64_t end,
                             float* best_v, int32_t* best_i) {
  __shared__ float sv[256];
  __shared__ int32_t si[256];
  float bv = -INFINITY;
  int32_t bi = -1;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int32_t at = ind ? ind[i] : static_cast<int32_t>(i);
    if (at >= 0 && (bi < 0 || v[i] > bv)) {
      bv = v[i];
      bi = at;
    }
  }
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float ov = sv[threadIdx.x + half], mv = sv[threadIdx.x];
      const int32_t oi = si[threadIdx.x + half], mi = si[threadIdx.x];
      if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
        sv[threadIdx.x] = ov;
        si[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *best_v = sv[0];
    *best_i = si[0];
  }
}

// Pass 1, grid (chunks, rows): the first maximum of each chunk of a row (many blocks per row: one
// block over a 150k vocabulary is a long serial walk).
__global__ void argmax_chunks_kernel(const float* __restrict__ x, int64_t rows, int64_t V, int64_t chunk,
                                     float* __restrict__ part_v, int32_t* __restrict__ part_i) {
  const int64_t c = blockIdx.x, begin = c * chunk;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t p = row * gridDim.x + c;
    block_argmax(x + row * V, nullptr, begin, min(V, begin + chunk), part_v + p, part_i + p);
    __syncthreads();  // the block's shared scratch is reused by the next row
  }
}

// Pass 2, one block per row: the first maximum over the row's chunks (in index order).
__global__ void argmax_merge_kernel(const float* __restrict__ part_v, const int32_t* __restrict__ part_i,
                                    int64_t rows, int chunks, int32_t* __restrict__ out) {
  __shared__ float v;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    block_argmax(part_v + row * chunks, part_i + row * chunks, 0, chunks, &v, out + row);
    __syncthreads();
  }
}

// A launch of paged_decode_o_kernel<true>: clusters of grid.x blocks (`attr` holds their size).
cudaLaunchConfig_t o_cluster_config(dim3 grid, size_t smem, cudaStream_t st, cudaLaunchAttribute& attr) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kOThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  attr = {};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = grid.x;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cfg;
}

// Whether clusters of `blocks` blocks of paged_decode_o_kernel<true> with `smem` bytes each can be
// placed on d (compute capability 9.0+); the answer is kept per shape.
bool o_cluster_launchable(Device d, int blocks, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, size_t>, bool> known;
  static size_t smem_set = 48 * 1024;  // the kernel's dynamic shared memory limit as set so far
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(d.index, blocks, smem);
  if (auto it = known.find(key); it != known.end()) return it->second;
  bool ok = false;
  int major = 0;
  LR_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d.index));
  if (major >= 9) {
    auto kernel = paged_decode_o_kernel<true>;
    if (smem > smem_set) {
      LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      smem_set = smem;
    }
    if (blocks > 8) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = o_cluster_config(dim3(unsigned(blocks)), smem, nullptr, attr);
    int clusters = 0;
    ok = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0;
    cudaGetLastError();  // a refusal is an answer, not an error for the next launch
  }
  known[key] = ok;
  return ok;
}

}  // namespace

Tensor argmax_rows(const Tensor& x) {
  check_arg(x, "argmax_rows", "x");
  LR_CHECK(x.rank() == 2 && x.dtype() == DType::F32 && x.dim(1) > 0 && x.dim(1) < (int64_t(1) << 31),
           "argmax_rows x ", x.str());
  const int64_t n = x.dim(0);
  Tensor idx = Tensor::empty({n}, DType::I32, x.device());
  if (n == 0) return idx;
  const int64_t V = x.dim(1), chunk = std::max<int64_t>(4096, (V + 63) / 64);
  const int64_t chunks = (V + chunk - 1) / chunk;
  cudaStream_t st = stream_for(x.device());
  Tensor part_v = Tensor::empty({n, chunks}, DType::F32, x.device());
  Tensor part_i = Tensor::empty({n, chunks}, DType::I32, x.device());
  argmax_chunks_kernel<<<dim3(unsigned(chunks), unsigned(std::min<int64_t>(n, 65535))), 256, 0, st>>>(
      x.data<float>(), n, V, chunk, part_v.data<float>(), part_i.data<int32_t>());
  LR_CUDA_LAUNCHED();
  argmax_merge_kernel<<<grid_for(n, 1), 256, 0, st>>>(part_v.data<float>(), part_i.data<int32_t>(), n,
                                                          int(chunks), idx.data<int32_t>());
  LR_CUDA_LAUNCHED();
  return idx;
}

void paged_kv_write_(Tensor& k_pool, Tensor& v_pool, const Tensor& k, const Tensor& v, const Tensor& slots) {
  check_arg(k_pool, "paged_kv_write_", "k_pool");
  check_arg(v_pool, "paged_kv_write_", "v_pool");
  check_arg(k, "paged_kv_write_", "k");
  check_arg(v, "paged_kv_write_", "v");
  check_arg(slots, "paged_kv_write_", "slots", true);
  const int64_t n = k.dim(0), w = k.dim(1);
  LR_CHECK(k.rank() == 2 && v.shape() == k.shape() && k_pool.rank() == 2 && k_pool.dim(1) == w &&
               v_pool.shape() == k_pool.shape() && k.dtype() == k_pool.dtype() && v.dtype() == k.dtype() &&
               v_pool.dtype() == k.dtype() && slots.dtype() == DType::I32 && slots.numel() == n,
           "paged_kv_write_: pools ", k_pool.str(), " ", v_pool.str(), " rows ", k.str(), " ", v.str(), " slots ",
           slots.str());
  if (n == 0) return;
  cudaStream_t st = stream_for(k.device());
  LR_FLOAT_TYPES(k.dtype(), T,
      paged_kv_write_kernel<T><<<grid_for(n * w, 256), 256, 0, st>>>(k_pool.data<T>(), v_pool.data<T>(),
                                                                       k.data<T>(), v.data<T>(),
                                                                       slots.data<int32_t>(), n, w, k_pool.dim(0)));
  LR_CUDA_LAUNCHED();
}

Tensor paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                       const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s) {
  check_arg(q, "paged_attention", "q");
  check_arg(k_pool, "paged_attention", "k_pool");
  check_arg(v_pool, "paged_attention", "v_pool");
  check_arg(block_tables, "paged_attention", "block_tables", true);
  check_arg(lens, "paged_attention", "lens", true);
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim, B = q.dim(0);
  LR_CHECK(q.rank() == 2 && q.dim(1) == H * hd && KV > 0 && H % KV == 0 && hd <= 32 * kMaxChunks &&
               k_pool.rank() == 2 && k_pool.dim(1) == KV * hd && v_pool.shape() == k_pool.shape() &&
               k_pool.dtype() == q.dtype() && v_pool.dtype() == q.dtype(),
           "paged_attention: q ", q.str(), " pools ", k_pool.str(), " ", v_pool.str(), " heads ", H, "/", KV,
           " head_dim ", hd, " (at most ", 32 * kMaxChunks, ")");
  LR_CHECK(block_tables.dtype() == DType::I32 && block_tables.rank() == 2 && block_tables.dim(0) == B &&
               lens.dtype() == DType::I32 && lens.numel() == B && block_size > 0 && max_len >= 1 &&
               max_len <= block_tables.dim(1) * block_size && max_len < (int64_t(1) << 31),
           "paged_attention: block_tables ", block_tables.str(), " lens ", lens.str(), " block_size ", block_size,
           " max_len ", max_len);
  Tensor out = Tensor::empty({B, H * hd}, q.dtype(), q.device());
  if (B == 0) return out;
  const Device dev = q.device();
  // Ordinary launches, not programmatic dependents (as dependents, one stream measured 204 against
  // 210 tok/s on the Llama-3-8B shape, 825 against 866 on Qwen2.5-0.5B's with an adapter, H200);
  // each kernel lets the one after it
  // launch at its start (allow_dependents), so that the projection after the attention loads its
  // weights meanwhile.
  cudaStream_t st = stream_for(dev);

  PagedDims d{};
  d.H = int(H);
  d.KV = int(KV);
  d.hd = int(hd);
  d.group = int(H / KV);
  d.heads_per_block = std::min(d.group, kMaxHeadsPerBlock);
  d.head_chunks = (d.group + d.heads_per_block - 1) / d.heads_per_block;
  d.block_size = int(block_size);
  d.max_blocks = int(block_tables.dim(1));
  d.window = s.window > 0 && s.window < max_len ? int(s.window) : 0;  // a window past max_len cuts nothing
  d.scale = s.scale;
  d.softcap = s.softcap;
  // Split the visible keys until the grid fills the GPU about twice (long contexts, small batches).
  const int64_t visible = d.window > 0 ? d.window : max_len;
  const int64_t tiles = (visible + kTile - 1) / kTile;
  const int64_t base_blocks = B * KV * d.head_chunks;
  const int64_t want = std::max<int64_t>(1, (2 * multiprocessor_count(dev) + base_blocks - 1) / base_blocks);
  const int64_t tiles_per_split = (tiles + std::min(tiles, want) - 1) / std::min(tiles, want);
  d.split_len = int(tiles_per_split * kTile);
  d.splits = int((tiles + tiles_per_split - 1) / tiles_per_split);

  // Short contexts split a few ways (many sequences): one block per (KV head, sequence), its warps
  // over the tiles. Measured on an H200 (Qwen-0.5B shape, 256-key bucket): batch 64 (3 splits)
  // 27.3k -> 31.8k tok/s; at batch 1-16 (8 splits) the split kernels' wider grid was faster.
  // Contexts of at most a tile a warp, of so few sequences that a block per query head fits the GPU
  // (one stream): the same kernel with one query head per block, so that each warp carries one
  // head through one tile, and no merge kernel runs after it (Qwen-0.5B one stream, 256-key
  // bucket: 1,067 -> 1,086 tok/s; at 512 keys, two tiles a warp, it lost 5% to the splits).
  const bool short_fits = d.splits > 1 && tiles <= kShortMaxTiles && q.dtype() == DType::BF16 && hd % 8 == 0 &&
                          hd <= 32 * kShortChunks;
  const bool per_head = short_fits && tiles <= kShortMaxWarps && B * H <= multiprocessor_count(dev);
  if (per_head) {
    d.heads_per_block = 1;
    d.head_chunks = d.group;
  }
  if (per_head || (short_fits && d.splits <= kShortMaxSplits && d.heads_per_block <= kShortHeads)) {
    const int warps = int(std::min<int64_t>(tiles, kShortMaxWarps));
    const size_t smem = short_smem_floats(d.heads_per_block, warps, int(hd)) * sizeof(float);
    auto kernel = paged_decode_short_kernel;
    if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<dim3(unsigned(KV * d.head_chunks), unsigned(B)), warps * 32, smem, st>>>(
        q.data<bf16>(), k_pool.data<bf16>(), v_pool.data<bf16>(), block_tables.data<int32_t>(), lens.data<int32_t>(),
        out.data<bf16>(), d);
    LR_CUDA_LAUNCHED();
    return out;
  }
  const int warps = std::min(d.heads_per_block, kMaxWarps);
  const size_t smem = (2 * kTile + size_t(d.heads_per_block) * hd + kTile * (hd + 1) + kTile * hd) * sizeof(float);
  Tensor part_o, part_lse;
  if (d.splits > 1) {
    part_o = Tensor::empty({B * H * d.splits, hd}, DType::F32, dev);
    part_lse = Tensor::empty({B * H * d.splits}, DType::F32, dev);
  }
  const dim3 grid(unsigned(d.splits), unsigned(KV * d.head_chunks), unsigned(B));
  LR_FLOAT_TYPES(q.dtype(), T, {
    auto kernel = paged_decode_kernel<T>;
    if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, warps * 32, smem, st>>>(q.data<T>(), k_pool.data<T>(), v_pool.data<T>(),
                                           block_tables.data<int32_t>(), lens.data<int32_t>(), out.data<T>(),
                                           d.splits > 1 ? part_o.data<float>() : nullptr,
                                           d.splits > 1 ? part_lse.data<float>() : nullptr, d);
    LR_CUDA_LAUNCHED();
    if (d.splits > 1) {
      const int threads = int(std::min<int64_t>(256, (hd + 31) / 32 * 32));
      paged_combine_kernel<T><<<unsigned(B * H), threads, 0, st>>>(part_o.data<float>(), part_lse.data<float>(),
                                                                 out.data<T>(), d.splits, d.hd);
      LR_CUDA_LAUNCHED();
    }
  });
  return out;
}

Tensor paged_attention_residual(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                                const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s,
                                const Tensor& w_o, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  static const bool enabled = [] {  // LOWRANK_DECODE_ATTENTION_O=0: the two ops (A/B timing)
    const char* v = std::getenv("LOWRANK_DECODE_ATTENTION_O");
    return !(v && std::string_view(v) == "0");
  }();
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim, n = w_o.rank() == 2 ? w_o.dim(0) : 0;
  const Device dev = q.device();
  const bool bf16s = q.dtype() == DType::BF16 && k_pool.dtype() == DType::BF16 && v_pool.dtype() == DType::BF16 &&
                     w_o.dtype() == DType::BF16 && res.dtype() == DType::BF16;
  const LowRankUpdate* u = !updates.empty() && updates[0].A.defined() ? &updates[0] : nullptr;
  const int64_t visible = s.window > 0 && s.window < max_len ? s.window : max_len;
  const int64_t tiles = (visible + kTile - 1) / kTile;
  // o's rows a part: what the block's loads cover, at most a row a thread for the part's last block.
  // A row's hd / 8 threads (a power of two: they sum by shuffles within a warp) are adjacent lanes.
  const int64_t per_row = hd / 8, rows = per_row > 0 ? std::min<int64_t>(kOLoads * (kOThreads / per_row), kOThreads) : 0;
  const int64_t parts = rows > 0 ? (n + rows - 1) / rows : 0;
  const bool fits = enabled && bf16s && q.rank() == 2 && q.dim(0) == 1 && KV > 0 && H % KV == 0 && hd % 8 == 0 &&
                    hd <= 64 && (per_row & (per_row - 1)) == 0 && tiles <= kOMaxTiles &&
                    q.dim(1) == H * hd && w_o.dim(1) == H * hd && res.rank() == 2 && res.dim(0) == 1 &&
                    res.dim(1) == n && parts <= kOMaxParts && H * parts <= multiprocessor_count(dev) &&
                    (!u || (u->A.dtype() == DType::BF16 && u->B.dtype() == DType::BF16 && u->A.dim(0) <= kOMaxRank)) &&
                    updates.size() <= 1;
  if (!fits) {
    return linear_residual(paged_attention(q, k_pool, v_pool, block_tables, lens, block_size, max_len, s), w_o, res,
                           updates);
  }
  check_arg(q, "paged_attention_residual", "q");
  check_arg(w_o, "paged_attention_residual", "w_o");
  check_arg(res, "paged_attention_residual", "res");
  LR_CHECK(k_pool.rank() == 2 && k_pool.dim(1) == KV * hd && v_pool.shape() == k_pool.shape() &&
               block_tables.dtype() == DType::I32 && block_tables.rank() == 2 && block_tables.dim(0) == 1 &&
               lens.dtype() == DType::I32 && lens.numel() == 1 && block_size > 0 && max_len >= 1 &&
               max_len <= block_tables.dim(1) * block_size,
           "paged_attention_residual: pools ", k_pool.str(), " ", v_pool.str(), " block_tables ", block_tables.str(),
           " lens ", lens.str(), " block_size ", block_size, " max_len ", max_len);
  PagedDims d{};
  d.H = int(H);
  d.KV = int(KV);
  d.hd = int(hd);
  d.group = int(H / KV);
  d.heads_per_block = 1;
  d.head_chunks = d.group;
  d.block_size = int(block_size);
  d.max_blocks = int(block_tables.dim(1));
  d.window = s.window > 0 && s.window < max_len ? int(s.window) : 0;
  d.scale = s.scale;
  d.softcap = s.softcap;
  d.split_len = int(tiles * kTile);
  d.splits = 1;
  Tensor y = Tensor::empty({1, n}, DType::BF16, dev);
  OProj o;
  o.w = w_o.data<bf16>();
  o.res = res.data<bf16>();
  o.y = y.data<bf16>();
  o.n = n;
  o.rows = int(rows);
  o.counters = context(dev).grid_counters + 2;
  if (u) {
    o.a = u->A.data<bf16>();
    o.b = u->B.data<bf16>();
    o.r = int(u->A.dim(0));
    o.b_packed = o.r % 8 == 0 && o.r <= 8 * kOBPacks && reinterpret_cast<uintptr_t>(o.b) % 16 == 0;
    o.scale = u->scale;
  }
  const size_t smem =
      (short_smem_floats(1, kShortMaxWarps, int(hd)) + size_t(hd) + (u ? size_t(u->A.dim(0)) * hd : 0)) * sizeof(float);
  o.stamps = next_launch_stamps(dev, "paged_attention_residual", H * parts);
  // A part's blocks as one cluster (o's sums in distributed shared memory) where the GPU can place
  // such a cluster (compute capability 9.0+, at most 16 heads). Same call, one H200, Qwen2.5-0.5B
  // shape, one stream: see docs/cuda.md. LOWRANK_DECODE_O_CLUSTER=0: the global sums (A/B timing).
  static const bool cluster_enabled = [] {
    const char* v = std::getenv("LOWRANK_DECODE_O_CLUSTER");
    return !(v && std::string_view(v) == "0");
  }();
  const int64_t sub = (rows + H - 1) / H;  // rows a block finishes with clusters
  const size_t cluster_smem = smem + (rows + kOMaxRank) * sizeof(float);
  if (cluster_enabled && H <= kOClusterMaxBlocks && o_cluster_launchable(dev, int(H), cluster_smem)) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        o_cluster_config(dim3(unsigned(H), unsigned(parts)), cluster_smem, stream_for(dev), attr);
    LR_CUDA(cudaLaunchKernelEx(&cfg, paged_decode_o_kernel<true>, q.data<bf16>(), k_pool.data<bf16>(),
                               v_pool.data<bf16>(), block_tables.data<int32_t>(), lens.data<int32_t>(), d, o,
                               int(sub)));
    return y;
  }
  // The heads' partial sums through global memory (the cluster form keeps them in shared memory).
  Tensor scratch = Tensor::empty({H * n + (u ? parts * H * u->A.dim(0) : 0)}, DType::F32, dev);
  o.partial = scratch.data<float>();
  if (u) o.h_partial = o.partial + H * n;
  auto kernel = paged_decode_o_kernel<false>;
  if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<dim3(unsigned(H), unsigned(parts)), kOThreads, smem, stream_for(dev)>>>(
      q.data<bf16>(), k_pool.data<bf16>(), v_pool.data<bf16>(), block_tables.data<int32_t>(), lens.data<int32_t>(), d,
      o, 0);
  LR_CUDA_LAUNCHED();
  return y;
}

}  // namespace lowrank::cuda
