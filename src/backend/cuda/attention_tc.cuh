#pragma once
// Shared pieces of the tensor-core attention kernels (attention_tc.cu forward,
// attention_tc_bwd.cu backward): tile sizes, dims and the 16-byte tile loader.
#include "common.cuh"
#include "mma.cuh"

namespace lowrank::cuda::tc {

constexpr int kRows = 64;   // query rows per block (16 per warp)
constexpr int kKeys = 64;   // keys per tile
constexpr int kThreads = 128;

struct TcDims {
  int64_t T, H, KV, group, window;
  float scale_log2;  // softmax scale * log2(e)
};

// Copies rows [r0, r0 + ROWS) of a head ([T, stride] bf16, 16-byte aligned) into shared [ROWS][LD],
// zero-filling rows at or past T (V rows must be 0, not garbage: P = 0 times NaN is NaN).
template <int HD, int LD, int ROWS = 64>
__device__ __forceinline__ void load_rows(bf16* dst, const bf16* __restrict__ src, int64_t stride, int64_t r0,
                                          int64_t T) {
  constexpr int kVec = HD / 8;  // 16-byte vectors per row
  for (int e = threadIdx.x; e < ROWS * kVec; e += kThreads) {
    const int r = e / kVec, c = (e % kVec) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r0 + r < T) val = *reinterpret_cast<const uint4*>(src + (r0 + r) * stride + c);
    *reinterpret_cast<uint4*>(dst + r * LD + c) = val;
  }
}

// Asynchronous variant (cp.async, 16 bytes per copy, no register round trip): rows at or past T
// are zero-filled by the copy engine (source size 0). Completes at cp_async_wait.
template <int HD, int LD, int ROWS = 64>
__device__ __forceinline__ void load_rows_async(bf16* dst, const bf16* __restrict__ src, int64_t stride,
                                                int64_t r0, int64_t T) {
  constexpr int kVec = HD / 8;
  for (int e = threadIdx.x; e < ROWS * kVec; e += kThreads) {
    const int r = e / kVec, c = (e % kVec) * 8;
    const bool in = r0 + r < T;
    cp_async16(dst + r * LD + c, in ? src + (r0 + r) * stride + c : src, in);
  }
}

// Double-buffered K/V tiles of the query-major kernels (forward and dq): kv_s holds two stages of
// [K tile | V tile] (kKeys rows each); stage it & 1 holds tile `it`. The copy of tile it + 1 (rows
// from next_row) is issued before waiting, so it lands while tile `it` is computed. Returns tile
// `it`'s K (its V follows at + kKeys * LD), visible to every thread of the block.
template <int HD, int LD>
__device__ __forceinline__ const bf16* next_kv_tile(bf16* kv_s, int64_t it, int64_t tiles, const bf16* __restrict__ kb,
                                                    const bf16* __restrict__ vb, int64_t kv_stride, int64_t next_row,
                                                    int64_t T) {
  if (it + 1 < tiles) {
    bf16* next = kv_s + ((it + 1) & 1) * 2 * kKeys * LD;
    load_rows_async<HD, LD>(next, kb, kv_stride, next_row, T);
    load_rows_async<HD, LD>(next + kKeys * LD, vb, kv_stride, next_row, T);
    cp_async_commit();
    cp_async_wait<1>();  // everything but the tile just issued has landed
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
  return kv_s + (it & 1) * 2 * kKeys * LD;
}

__device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t window) {
  return j <= i && (window <= 0 || j > i - window);
}

// The four bf16 pairs of an A fragment (rows r, r + 8; cols c..c+1, c+8..c+9) from shared [.][LD].
template <int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* base, int r, int c) {
  a[0] = *reinterpret_cast<const uint32_t*>(base + r * LD + c);
  a[1] = *reinterpret_cast<const uint32_t*>(base + (r + 8) * LD + c);
  a[2] = *reinterpret_cast<const uint32_t*>(base + r * LD + c + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(base + (r + 8) * LD + c + 8);
}

}  // namespace lowrank::cuda::tc
