#pragma once
// A warp's online softmax over one tile of up to 32 keys, for the decode attention kernels
// (paged_attention.cu, decode_stack.cu): lane j scores key j against the query row, then every
// lane adds the tile's probabilities times V into the output columns it owns.
#include "common.cuh"

namespace lowrank::cuda {

// A scaled score -> its soft-capped value (Gemma 2: cap · tanh(s / cap)); 0: none.
__device__ __forceinline__ float capped(float score, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(score / softcap) : score;
}

// Folds keys [0, n) of a tile into the running max m, sum l and output o of query row qr [hd]
// (its scale folded in). K rows at k_s + j · ldk, V rows at v_s + j · hd, f32 (shared memory);
// o[c] is column lane + 32c. Lane 0 must hold a key (n >= 1): the max stays finite.
template <int kChunks>
__device__ __forceinline__ void online_softmax_tile(const float* qr, const float* k_s, int ldk, const float* v_s,
                                                    int hd, int n, float softcap, float& m, float& l,
                                                    float (&o)[kChunks]) {
  const int lane = threadIdx.x & 31;
  float sc = -INFINITY;
  if (lane < n) {
    const float* kr = k_s + lane * ldk;
    float dot = 0.0f;
    // Unrolled so that the shared-memory loads go out together; the sum keeps its order.
#pragma unroll 8
    for (int d = 0; d < hd; ++d) dot += qr[d] * kr[d];
    sc = capped(dot, softcap);
  }
  const float m_new = fmaxf(m, warp_max(sc));
  const float corr = expf(m - m_new);
  const float p = lane < n ? expf(sc - m_new) : 0.0f;
  l = l * corr + warp_sum(p);
  m = m_new;
#pragma unroll
  for (int c = 0; c < kChunks; ++c) o[c] *= corr;
  // A decode step waits on this loop (one head a warp, one tile a split): unrolled, the shuffles
  // and loads of several keys are in flight at once; each o[c] still adds the keys in order.
#pragma unroll 8
  for (int j = 0; j < n; ++j) {
    const float pj = __shfl_sync(0xffffffffu, p, j);
    const float* vr = v_s + j * hd;
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
      if (lane + 32 * c < hd) o[c] += pj * vr[lane + 32 * c];
  }
}

// The online softmax of the query heads one warp carries (the split decode kernels): slot i holds
// the block's head warp + i · warps (warp-uniform), its output columns lane + 32c.
template <int kHeads, int kChunks>
struct WarpHeads {
  float m[kHeads], l[kHeads], o[kHeads][kChunks];

  __device__ __forceinline__ WarpHeads() {
#pragma unroll
    for (int i = 0; i < kHeads; ++i) {
      m[i] = -INFINITY;
      l[i] = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) o[i][c] = 0.0f;
    }
  }

  // Folds keys [0, n) of a tile (K, V in shared memory as online_softmax_tile takes them) into the
  // slots of the block's `heads` heads, their scaled query rows at q_s + head · hd.
  __device__ __forceinline__ void fold(const float* q_s, int hd, int warp, int warps, int heads, const float* k_s,
                                       int ldk, const float* v_s, int n, float softcap) {
#pragma unroll
    for (int i = 0; i < kHeads; ++i) {
      const int hl = warp + i * warps;
      if (hl >= heads) break;
      online_softmax_tile(q_s + hl * hd, k_s, ldk, v_s, hd, n, softcap, m[i], l[i], o[i]);
    }
  }

  // Slot i's normalised output through put(column, value) and its log-sum-exp through put_lse
  // (-inf for a split without keys, whose output is 0), for the slots of the block's heads.
  template <typename Put, typename PutLse>
  __device__ __forceinline__ void write(int hd, int warp, int warps, int heads, Put put, PutLse put_lse) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < kHeads; ++i) {
      const int hl = warp + i * warps;
      if (hl >= heads) break;
      const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;  // l = 0 only for an empty split
#pragma unroll
      for (int c = 0; c < kChunks; ++c)
        if (lane + 32 * c < hd) put(hl, lane + 32 * c, o[i][c] * inv);
      if (lane == 0) put_lse(hl, l[i] > 0.0f ? m[i] + logf(l[i]) : -INFINITY);
    }
  }
};

}  // namespace lowrank::cuda
