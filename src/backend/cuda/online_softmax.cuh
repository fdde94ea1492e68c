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

}  // namespace lowrank::cuda
