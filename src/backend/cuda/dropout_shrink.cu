// LoRA's shrink through its dropout on CUDA, dropout(x) never written out (the CPU's form:
// src/backend/cpu/dropout_shrink.cpp). Element k of x is kept when stream position offset + k of
// the dropout draws says so (lowrank/backend/philox.h), as ops::dropout draws it (dropout.cu), so
// the masks are the composition's. The kept x enter the products unscaled and 1/keep multiplies
// each sum once (the composition rounds x / keep to bf16 first): closer to the f32 definition,
// not bitwise the composition.
//   forward   h [N, r] = drop(x) Aᵀ: tensor cores (mma.sync m16n8k16), a block per 16 rows, its
//             8 warps splitting the K columns in chunks of 32 and summing in shared memory.
//   backward  dA [r, in] += α gᵀ drop(x) and dx (+)= drop'(α g A): one pass over x (and dx) on
//             tensor cores, a warp per 32 columns of a chunk of rows; the chunks' partial dA
//             summed in chunk order by a second launch (the same sums every run).
// Measured on an H200 (bench_cuda_ops --dropout-shrink, 8,192 rows, r = 16, p = 0.05): forward
// 0.011 / 0.104 ms at in = 768 / 8,192 against 0.020 / 0.139 composed; backward 0.027 / 0.185 ms
// against 0.043 / 0.302 (bound by the Philox draws, not by memory: 16-bit draws, eight a block,
// took 0.015 / 0.132 and 0.034 / 0.204 down to these). The variants measured
// slower (ranks in blocks of 16 for the backward, several m-tiles a forward block, g staged for
// ldmatrix, loads issued a step ahead; the forward recording its mask as bits for the backward,
// whose byte loads then cost more than the draws): docs/cuda-performance-notes.md, "Fused after
// all" and "16-bit draws".
// Without the fused kernels' preconditions (bf16, in % 8 == 0, 16-byte rows, r <= 64 forward;
// in % 32 == 0, r <= 16 backward) and with LOWRANK_FUSED_DROPOUT=0 (A/B timing): the composition
// dropout, then the GEMMs, then dropout's backward on α g A — on bf16 column blocks without
// copying them out (composed_backward). A backward at a stacked rank of 48 (one mask over q, k,
// v: LoraConfig::dropout_per_input) takes ~0.05 ms there at in = 768 (H200, 8,192 rows), against
// 0.07 for the fused kernel with its ranks in blocks of 16 (measured, not kept) and 3 × 0.028 for
// three fused backwards at r = 16.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "backend/cuda/common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/mma.cuh"
#include "lowrank/backend/philox.h"

namespace lowrank::cuda {
namespace {

// ---- forward ----------------------------------------------------------------------------------

constexpr int kShrinkWarps = 8;

// h rows [16 b, 16 b + 16) = drop(x) Aᵀ for r <= 8 · NT. Lane (g, t) of a warp takes, in each
// 32-column chunk, columns 8t..8t+7 of rows g and g + 8 (one 16-byte load each) and of A's rows
// 8 n + g: k-step s of the mma uses their elements 4s..4s+3 — any assignment of the chunk's
// columns to the mma's k index gives the same dot products, as long as both operands use it.
template <int NT>
__global__ void __launch_bounds__(kShrinkWarps * 32)
    dropout_shrink_kernel(const bf16* __restrict__ x, int64_t ldx, const bf16* __restrict__ A, bf16* __restrict__ h,
                          int64_t ldh, int64_t n, int in, int r, uint32_t below, float alpha_keep, uint64_t seed,
                          uint64_t offset, const int64_t* __restrict__ delta) {
  __shared__ float part[kShrinkWarps][16][8 * NT];
  if (delta) offset += static_cast<uint64_t>(*delta);  // a graph replay's position of the Rng
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t row0 = int64_t(blockIdx.x) * 16, rows[2] = {row0 + g, row0 + g + 8};
  float acc[NT][4] = {};
  for (int k = warp * 32 + 8 * t; k - 8 * t < in; k += kShrinkWarps * 32) {
    uint32_t a[2][4] = {}, b[NT][4] = {};  // a[row][pair]: drop(x) as bf16 pairs; b[n][pair]: A
    if (k < in) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (rows[i] >= n) continue;
        float v[8];
        unpack8(*reinterpret_cast<const uint4*>(x + rows[i] * ldx + k), v);
        const uint32_t m = dropout_kept8(seed, offset + rows[i] * in + k, below);  // x's own positions
#pragma unroll
        for (int p = 0; p < 4; ++p)
          a[i][p] = pack_bf16(m >> (2 * p) & 1 ? v[2 * p] : 0.0f, m >> (2 * p + 1) & 1 ? v[2 * p + 1] : 0.0f);
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int ar = 8 * j + g;
        if (ar < r) {
          const uint4 u = *reinterpret_cast<const uint4*>(A + int64_t(ar) * in + k);
          b[j][0] = u.x, b[j][1] = u.y, b[j][2] = u.z, b[j][3] = u.w;
        }
      }
    }
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const uint32_t frag[4] = {a[0][2 * s], a[1][2 * s], a[0][2 * s + 1], a[1][2 * s + 1]};
#pragma unroll
      for (int j = 0; j < NT; ++j) mma_bf16_16816(acc[j], frag, b[j][2 * s], b[j][2 * s + 1]);
    }
  }
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    part[warp][g][8 * j + 2 * t] = acc[j][0];
    part[warp][g][8 * j + 2 * t + 1] = acc[j][1];
    part[warp][g + 8][8 * j + 2 * t] = acc[j][2];
    part[warp][g + 8][8 * j + 2 * t + 1] = acc[j][3];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * 8 * NT; e += blockDim.x) {
    const int row = e / (8 * NT), col = e % (8 * NT);
    if (row0 + row >= n || col >= r) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kShrinkWarps; ++w) sum += part[w][row][col];  // warps in order
    h[(row0 + row) * ldh + col] = __float2bfloat16_rn(sum * alpha_keep);  // alpha/keep once a sum, not per element
  }
}

// ---- backward ---------------------------------------------------------------------------------

constexpr int kBackMaxRows = 128;  // rows of a chunk
constexpr int kBackWarps = 4;

// dx of a chunk of rows (blockIdx.y) and its partial Σ_rows gᵀ drop(x) into partial[blockIdx.y],
// on tensor cores, r <= 16. A warp takes 32 columns of the chunk, 16 rows a step; a block 4 warps
// side by side (128 columns). Lane (g, t) owns the 16 elements rows {2t, 2t+1, 2t+8, 2t+9} ×
// columns {4g..4g+3} of each step: half of 4 Philox blocks (2 drawn, 2 from lane g ^ 1); 8-byte
// loads and stores. Two mmas a step see them in their
// layouts by permuting the index that is summed over or written:
//   dA [r, 32] += gᵀ [r, 16 rows] · drop(x) [16 rows, 32]: n-tile j's column g is column 4g + j,
//     so b0/b1 of n-tile j are the lane's column 4g + j at rows 2t, 2t+1 / 2t+8, 2t+9;
//   g A, transposed [32, 16 rows] = Aᵀ [32, r] · gᵀ [r, 16 rows]: m-tile i's rows g and g + 8 are
//     columns 4g + 2i and 4g + 2i + 1, so its C fragment is the lane's own 16 elements.
__global__ void __launch_bounds__(kBackWarps * 32)
    dropout_shrink_backward_kernel(const bf16* __restrict__ x, int64_t ldx, const bf16* __restrict__ gin,
                                       int64_t ldg, const bf16* __restrict__ A, float* __restrict__ partial,
                                       bf16* __restrict__ dx, int64_t lddx, bool accumulate, int64_t n, int in,
                                       int r, int rows_per, float alpha_keep, uint32_t below, uint64_t seed,
                                       uint64_t offset, const int64_t* __restrict__ delta) {
  if (delta) offset += static_cast<uint64_t>(*delta);
  const bool paired = offset % 8 == 0;  // column 0 of every row starts a Philox block (in % 32 == 0)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int col0 = (blockIdx.x * kBackWarps + warp) * 32;
  if (col0 >= in) return;  // no block-wide barrier below
  const int col = col0 + 4 * g;  // the lane's 4 columns
  const int64_t row0 = int64_t(blockIdx.y) * rows_per, row_end = row0 + rows_per < n ? row0 + rows_per : n;
  auto g_at = [&](int64_t row, int k) -> uint32_t {  // g[row][k] as bf16 bits, 0 outside
    return row < row_end && k < r ? __bfloat16_as_ushort(gin[row * ldg + k]) : 0u;
  };
  auto pair = [](uint32_t lo, uint32_t hi) { return lo | hi << 16; };
  // Aᵀ fragments (m-tile i, k = rank): a0 rows g (column 4g + 2i) ranks 2t, 2t+1; a1 row g + 8
  // (column 4g + 2i + 1); a2, a3 ranks 2t + 8, 2t + 9.
  uint32_t at[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    auto a_at = [&](int k, int c) -> uint32_t { return k < r ? __bfloat16_as_ushort(A[int64_t(k) * in + c]) : 0u; };
    const int c0 = col + 2 * i, c1 = c0 + 1;
    at[i][0] = pair(a_at(2 * t, c0), a_at(2 * t + 1, c0));
    at[i][1] = pair(a_at(2 * t, c1), a_at(2 * t + 1, c1));
    at[i][2] = pair(a_at(2 * t + 8, c0), a_at(2 * t + 9, c0));
    at[i][3] = pair(a_at(2 * t + 8, c1), a_at(2 * t + 9, c1));
  }
  float da[4][4] = {};  // dA C fragments, n-tile j
  const int lrow[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
  for (int64_t s = row0; s < row_end; s += 16) {
    uint2 xv[4], dv[4];
    uint32_t m[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t row = s + lrow[q];
      const bool here = row < row_end;
      xv[q] = here ? *reinterpret_cast<const uint2*>(x + row * ldx + col) : uint2{0, 0};
      dv[q] = here && dx && accumulate ? *reinterpret_cast<const uint2*>(dx + row * lddx + col) : uint2{0, 0};
    }
    // gᵀ as the dA mma's A operand (rank g / g + 8 at the lane's rows) and as g A's B operand
    // (row g / g + 8 of the step, ranks 2t.. / 2t + 8..).
    const uint32_t ga[4] = {pair(g_at(s + lrow[0], g), g_at(s + lrow[1], g)),
                            pair(g_at(s + lrow[0], g + 8), g_at(s + lrow[1], g + 8)),
                            pair(g_at(s + lrow[2], g), g_at(s + lrow[3], g)),
                            pair(g_at(s + lrow[2], g + 8), g_at(s + lrow[3], g + 8))};
    uint32_t gb[2][2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int64_t row = s + 8 * u + g;
      gb[u][0] = pair(g_at(row, 2 * t), g_at(row, 2 * t + 1));
      gb[u][1] = pair(g_at(row, 2 * t + 8), g_at(row, 2 * t + 9));
    }
    if (paired) {
      // The lane's 4 columns of a row are half of a Philox block's 8 draws, lane g ^ 1 (lane ^ 4)
      // owns the other half: each draws the blocks of two of the four rows (even g rows q = 0, 1;
      // odd g rows 2, 3) and they swap, one block a row between them.
      uint32_t own[2], other[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t row = s + lrow[2 * (g & 1) + j];
        own[j] = dropout_block_kept(seed, (offset + uint64_t(row * in + (col & ~7))) / 8, below);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) other[j] = __shfl_xor_sync(0xFFFFFFFFu, own[j], 4);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t block = q / 2 == (g & 1) ? own[q % 2] : other[q % 2];
        m[q] = s + lrow[q] < row_end ? block >> (4 * (g & 1)) & 0xFu : 0u;
      }
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int64_t row = s + lrow[q];
        m[q] = row < row_end ? dropout_kept8(seed, offset + uint64_t(row * in + col), below) & 0xFu : 0u;
      }
    }
    // drop(x) (unscaled: 1/keep is in the partials' sum) as bf16 bits, [q][c].
    uint32_t xd[4][4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t w[4] = {xv[q].x & 0xFFFFu, xv[q].x >> 16, xv[q].y & 0xFFFFu, xv[q].y >> 16};
#pragma unroll
      for (int c = 0; c < 4; ++c) xd[q][c] = m[q] >> c & 1 ? w[c] : 0u;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      mma_bf16_16816(da[j], ga, pair(xd[0][j], xd[1][j]), pair(xd[2][j], xd[3][j]));
    if (!dx) continue;
    // (g A)ᵀ: m-tile i, n-tile u: c0 (column 4g + 2i, row 8u + 2t), c1 (row + 1), c2, c3 column + 1.
    float gx[2][2][4] = {};
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int u = 0; u < 2; ++u) mma_bf16_16816(gx[i][u], at[i], gb[u][0], gb[u][1]);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int u = q / 2, e = q % 2;  // rows 2t, 2t+1 in n-tile 0; 2t+8, 2t+9 in n-tile 1
      const int64_t row = s + lrow[q];
      if (row >= row_end) continue;
      const float term[4] = {gx[0][u][e], gx[0][u][2 + e], gx[1][u][e], gx[1][u][2 + e]};
      const float2 d01 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&dv[q].x));
      const float2 d23 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&dv[q].y));
      const float ds[4] = {d01.x, d01.y, d23.x, d23.y};
      float out[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float add = m[q] >> c & 1 ? alpha_keep * term[c] : 0.0f;
        out[c] = accumulate ? ds[c] + add : add;
      }
      uint2 o;
      o.x = pack_bf16(out[0], out[1]);
      o.y = pack_bf16(out[2], out[3]);
      *reinterpret_cast<uint2*>(dx + row * lddx + col) = o;
    }
  }
  // Partial dA of the chunk: n-tile j's columns 2t, 2t + 1 are columns 8t + j, 8t + 4 + j.
  float* p = partial + int64_t(blockIdx.y) * r * in + col0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (g < r) p[int64_t(g) * in + 8 * t + j] = da[j][0], p[int64_t(g) * in + 8 * t + 4 + j] = da[j][1];
    if (g + 8 < r) p[int64_t(g + 8) * in + 8 * t + j] = da[j][2], p[int64_t(g + 8) * in + 8 * t + 4 + j] = da[j][3];
  }
}

// dA[e] += α Σ_c partial[c][e]. A block takes 32 elements; its 8 warps sum the chunks c ≡ warp
// (mod 8) of them in order, then the warps' sums are added in warp order: the same sums every run.
// (One thread an element summing every chunk in order left most SMs idle at small widths: base7m's
// 4,096 elements over 256 chunks took ~9 µs a call, 42 calls a step.)
// dA may hold only the first `size` elements of a chunk's `stride` (the first rows of the gradient).
constexpr int kAddGroups = 8;
__global__ void __launch_bounds__(32 * kAddGroups)
    add_partials_kernel(float* __restrict__ dA, const float* __restrict__ partial, int64_t size, int64_t stride,
                        int chunks, float alpha) {
  __shared__ float sums[kAddGroups][32];
  const int lane = threadIdx.x % 32, group = threadIdx.x / 32;
  const int64_t e = int64_t(blockIdx.x) * 32 + lane;
  float sum = 0.0f;
  if (e < size)
    for (int c = group; c < chunks; c += kAddGroups) sum += partial[c * stride + e];
  sums[group][lane] = sum;
  __syncthreads();
  if (group != 0 || e >= size) return;
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kAddGroups; ++w) total += sums[w][lane];
  dA[e] += alpha * total;
}

bool fused_dropout_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LOWRANK_FUSED_DROPOUT");
    return !(v && std::string_view(v) == "0");
  }();
  return on;
}


// A column block's first element and row stride; fits16: 16-byte aligned rows (the fused
// kernels' vector loads).
struct Strided {
  bf16* p;
  int64_t ld;
  bool fits16() const { return aligned16(p) && ld % 8 == 0; }
};
Strided strided(const ColumnBlock& b) { return {b.t.data<bf16>() + b.col, b.t.dim(1)}; }

// The fused kernels' common preconditions: bf16 x [N, in] and A [r, in], in % 8 == 0, 16-byte rows.
bool fused_fits(const ColumnBlock& x, const Tensor& A, int64_t max_rank) {
  return fused_dropout_enabled() && x.t.dtype() == DType::BF16 && A.dtype() == DType::BF16 && A.rank() == 2 &&
         x.width % 8 == 0 && x.width <= (1 << 30) && A.dim(0) >= 1 && A.dim(0) <= max_rank &&
         strided(x).fits16() && aligned16(A.raw());
}

const int64_t* device_delta(const DropoutDraws& d) {
  if (!d.device_offset.defined()) return nullptr;
  check_arg(d.device_offset, "dropout_shrink", "device_offset", true);
  return d.device_offset.data<int64_t>();
}

// The block as a tensor of its own (the block's tensor itself when it is all of it).
Tensor columns_of(const ColumnBlock& b) {
  if (b.col == 0 && b.width == b.t.dim(1)) return b.t;
  Tensor t = Tensor::empty({b.t.dim(0), b.width}, b.t.dtype(), b.t.device());
  copy_columns_(t, 0, b.t, b.col, b.width);
  return t;
}

// The unfused backward on column blocks of bf16 rows of 16-byte multiples (a shared-input group's
// x and dx inside the K-extension's wide matrices), without copying them out: x's block dropped
// into x_drop [N, in] with its mask as a byte of 8 bits per 8 elements, the GEMMs, then the
// dropout's backward of gx straight into dx's block. The roundings are dropout's and
// dropout_backward_add_'s: x_drop = bf16(x / keep), dx = bf16(dx + gx / keep) where kept.
__global__ void drop_block_kernel(const bf16* __restrict__ x, int64_t ldx, bf16* __restrict__ out,
                                  uint8_t* __restrict__ bits, int64_t n, int in, float keep, uint32_t below,
                                  uint64_t seed, uint64_t offset, const int64_t* __restrict__ delta) {
  if (delta) offset += static_cast<uint64_t>(*delta);
  const int packs = in / 8;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n * packs; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / packs, c = (t % packs) * 8;
    const uint32_t kept = dropout_kept8(seed, offset + uint64_t(i * in + c), below);
    const uint4 xv = *reinterpret_cast<const uint4*>(x + i * ldx + c);
    const bf16* xs = reinterpret_cast<const bf16*>(&xv);
    uint4 ov;
    bf16* os = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int w = 0; w < 8; ++w) os[w] = __float2bfloat16_rn(kept >> w & 1u ? __bfloat162float(xs[w]) / keep : 0.0f);
    *reinterpret_cast<uint4*>(out + i * in + c) = ov;
    if (bits) bits[t] = static_cast<uint8_t>(kept);
  }
}

// bits null: the mask drawn here (dx alone: no x_drop was made).
__global__ void drop_add_block_kernel(bf16* __restrict__ dx, int64_t lddx, const bf16* __restrict__ gx,
                                      const uint8_t* __restrict__ bits, int64_t n, int in, float keep,
                                      bool accumulate, uint32_t below, uint64_t seed, uint64_t offset,
                                      const int64_t* __restrict__ delta) {
  if (delta) offset += static_cast<uint64_t>(*delta);
  const int packs = in / 8;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n * packs; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / packs, c = (t % packs) * 8;
    const uint32_t kept = bits ? bits[t] : dropout_kept8(seed, offset + uint64_t(i * in + c), below);
    const uint4 gv = *reinterpret_cast<const uint4*>(gx + i * in + c);
    uint4 dv = accumulate ? *reinterpret_cast<const uint4*>(dx + i * lddx + c) : uint4{0, 0, 0, 0};
    const bf16* gs = reinterpret_cast<const bf16*>(&gv);
    bf16* ds = reinterpret_cast<bf16*>(&dv);
#pragma unroll
    for (int w = 0; w < 8; ++w)
      if (kept >> w & 1u) ds[w] = __float2bfloat16_rn((accumulate ? __bfloat162float(ds[w]) : 0.0f) +
                                                      __bfloat162float(gs[w]) / keep);
    *reinterpret_cast<uint4*>(dx + i * lddx + c) = dv;
  }
}

void composed_backward(const ColumnBlock& xb, const DropoutDraws& d, const ColumnBlock& gb, const Tensor& A,
                       Tensor& dA, float alpha, const ColumnBlock* dx, bool accumulate) {
  const ColumnBlock g_rows{gb.t, gb.col, dA.defined() ? dA.dim(0) : 0};  // dA may take only its first rows
  if (xb.t.dtype() == DType::BF16 && gb.t.dtype() == DType::BF16 && xb.width % 8 == 0 && strided(xb).fits16() &&
      (!dx || (dx->t.dtype() == DType::BF16 && strided(*dx).fits16()))) {
    const int64_t n = xb.t.dim(0);
    const int in = static_cast<int>(xb.width);
    const float keep = static_cast<float>(1.0 - d.p);
    cudaStream_t st = stream_for(xb.t.device());
    const unsigned grid = grid_for(n * (in / 8), 256);
    Tensor bits;  // the mask for dx, when x_drop was made for dA
    if (dA.defined()) {
      Tensor x_drop = Tensor::empty({n, in}, DType::BF16, xb.t.device());
      if (dx) bits = Tensor::empty({n * (in / 8)}, DType::U8, xb.t.device());
      const Strided xs = strided(xb);
      drop_block_kernel<<<grid, 256, 0, st>>>(xs.p, xs.ld, x_drop.data<bf16>(),
                                              dx ? bits.data<uint8_t>() : nullptr, n, in, keep, dropout_below(keep),
                                              d.seed, d.offset, device_delta(d));
      LR_CUDA_LAUNCHED();
      matmul_blocks(Gemm::TN, g_rows, ColumnBlock::all(x_drop), ColumnBlock::all(dA), alpha, 1.0f);
    }
    if (!dx) return;
    Tensor gx = Tensor::empty({n, in}, DType::BF16, xb.t.device());
    matmul_blocks(Gemm::NN, gb, ColumnBlock::all(A), ColumnBlock::all(gx), alpha, 0.0f);
    const Strided dxs = strided(*dx);
    drop_add_block_kernel<<<grid, 256, 0, st>>>(dxs.p, dxs.ld, gx.data<bf16>(),
                                                bits.defined() ? bits.data<uint8_t>() : nullptr, n, in, keep,
                                                accumulate, dropout_below(keep), d.seed, d.offset, device_delta(d));
    LR_CUDA_LAUNCHED();
    return;
  }
  const Tensor x = columns_of(xb), g = columns_of(gb);
  Tensor mask;  // only for an accumulated dx: a written one draws the mask again
  const Tensor x_drop = dropout(x, d.p, d.seed, d.offset, dx && accumulate ? &mask : nullptr, d.device_offset);
  if (dA.defined()) matmul_blocks(Gemm::TN, {g, 0, dA.dim(0)}, ColumnBlock::all(x_drop), ColumnBlock::all(dA), alpha, 1.0f);
  if (!dx) return;
  Tensor gx;
  matmul_nn(g, A, gx, alpha, 0.0f);
  Tensor out = accumulate ? columns_of(*dx) : dropout(gx, d.p, d.seed, d.offset, nullptr, d.device_offset);
  if (accumulate) dropout_backward_add_(out, gx, mask, d.p);
  if (out.raw() != dx->t.raw()) {
    Tensor dst = dx->t;
    copy_columns_(dst, dx->col, out, 0, dx->width);
  }
}

}  // namespace

void dropout_shrink(const ColumnBlock& x, const DropoutDraws& d, const Tensor& A, const ColumnBlock& h, float alpha) {
  check_arg(x.t, "dropout_shrink", "x");
  check_arg(A, "dropout_shrink", "A");
  check_arg(h.t, "dropout_shrink", "h");
  LR_CHECK(d.p >= 0.0 && d.p < 1.0, "dropout_shrink: dropout p ", d.p);
  if (h.t.dtype() != DType::BF16 || !fused_fits(x, A, 64) || x.t.dim(0) == 0) {
    matmul_blocks(Gemm::NT, ColumnBlock::all(dropout(columns_of(x), d.p, d.seed, d.offset, nullptr, d.device_offset)),
                  ColumnBlock::all(A), h, alpha, 0.0f);
    return;
  }
  const int64_t n = x.t.dim(0);
  const int in = static_cast<int>(x.width), r = static_cast<int>(A.dim(0));
  const float keep = static_cast<float>(1.0 - d.p);
  cudaStream_t st = stream_for(x.t.device());
  const unsigned blocks = static_cast<unsigned>((n + 15) / 16);
  const Strided xs = strided(x), hs = strided(h);
  auto launch = [&](auto kernel) {
    kernel<<<blocks, kShrinkWarps * 32, 0, st>>>(xs.p, xs.ld, A.data<bf16>(), hs.p, hs.ld, n, in, r,
                                                 dropout_below(keep), alpha / keep, d.seed, d.offset, device_delta(d));
  };
  if (r <= 8) launch(dropout_shrink_kernel<1>);
  else if (r <= 16) launch(dropout_shrink_kernel<2>);
  else if (r <= 32) launch(dropout_shrink_kernel<4>);
  else launch(dropout_shrink_kernel<8>);
  LR_CUDA_LAUNCHED();
}

void dropout_shrink_backward(const ColumnBlock& x, const DropoutDraws& d, const ColumnBlock& g, const Tensor& A,
                             Tensor& dA, float alpha, const ColumnBlock* dx, bool accumulate) {
  check_arg(x.t, "dropout_shrink_backward", "x");
  check_arg(A, "dropout_shrink_backward", "A");
  check_arg(g.t, "dropout_shrink_backward", "g");
  if (dA.defined()) check_arg(dA, "dropout_shrink_backward", "dA");
  if (dx) check_arg(dx->t, "dropout_shrink_backward", "dx");
  LR_CHECK(d.p >= 0.0 && d.p < 1.0, "dropout_shrink_backward: dropout p ", d.p);
  LR_CHECK(!dA.defined() || (dA.rank() == 2 && dA.dim(1) == A.dim(1) && dA.dim(0) <= A.dim(0)),
           "dropout_shrink_backward: dA ", dA.str(), " for A ", A.str());
  // dx alone (no dA) composes: the GEMM for g A and one pass that draws the mask as it adds.
  if (!dA.defined() || !fused_fits(x, A, 16) || x.width % 32 != 0 || g.t.dtype() != DType::BF16 || dA.dtype() != DType::F32 ||
      (dx && (dx->t.dtype() != DType::BF16 || !strided(*dx).fits16())) || x.t.dim(0) == 0) {
    composed_backward(x, d, g, A, dA, alpha, dx, accumulate);
    return;
  }
  const int64_t n = x.t.dim(0);
  const int in = static_cast<int>(x.width), r = static_cast<int>(A.dim(0));
  // Chunks of rows: enough blocks for every SM a few times over, at most kBackMaxRows rows each
  // and at least 32 (each chunk writes an [r, in] f32 partial that the second launch reads).
  const int col_blocks = (in + kBackWarps * 32 - 1) / (kBackWarps * 32);
  const int64_t want_chunks = std::max<int64_t>(1, 6 * multiprocessor_count(x.t.device()) / col_blocks);
  int rows_per = static_cast<int>(std::clamp<int64_t>((n + want_chunks - 1) / want_chunks, 32, kBackMaxRows));
  rows_per = (rows_per + 15) / 16 * 16;  // whole steps
  const int chunks = static_cast<int>((n + rows_per - 1) / rows_per);
  Tensor partial = Tensor::empty({chunks, r, in}, DType::F32, x.t.device());
  const float keep = static_cast<float>(1.0 - d.p);
  cudaStream_t st = stream_for(x.t.device());
  const dim3 grid(col_blocks, chunks);
  const Strided xs = strided(x), gs = strided(g), dxs = dx ? strided(*dx) : Strided{nullptr, 0};
  dropout_shrink_backward_kernel<<<grid, kBackWarps * 32, 0, st>>>(
      xs.p, xs.ld, gs.p, gs.ld, A.data<bf16>(), partial.data<float>(), dxs.p, dxs.ld, accumulate, n, in, r, rows_per,
      alpha / keep, dropout_below(keep), d.seed, d.offset, device_delta(d));
  LR_CUDA_LAUNCHED();
  const int64_t size = dA.numel();
  add_partials_kernel<<<static_cast<unsigned>((size + 31) / 32), 32 * kAddGroups, 0, st>>>(
      dA.data<float>(), partial.data<float>(), size, int64_t(r) * in, chunks, alpha / keep);
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
