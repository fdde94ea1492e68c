// Tensor-core attention backward for bf16 with head_dim 64 or 128. The same split as the generic
// backward (attention.cu), so nothing is added with atomics and the result is deterministic:
//   dq kernel   (query-major): a block owns 64 query rows (16 per warp) and loops over key tiles:
//               S = Q Kᵀ, dP = dO Vᵀ, P = exp(S·scale - lse), dS = P (dP - D), dQ += dS K.
//   dkdv kernel (key-major): a block owns 64 keys (16 per warp) and loops over the group's heads
//               and the query tiles (32 rows) that see them, computing the transposes directly:
//               Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, then dV += Pᵀ dO and dK += dSᵀ Q.
// Operands of the second products (K, dO, Q) come transposed through ldmatrix.trans; P and dS are
// rounded to bf16 for them, as in FlashAttention-2. D = rowsum(dO ⊙ O) comes from the generic
// delta kernel.
#include "attention.h"
#include "attention_tc.cuh"
#include "common.cuh"
#include "mma.cuh"

namespace lowrank::cuda {
namespace {

using namespace tc;

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kBwdQueries = 32;  // query rows per step of the dkdv kernel

template <int HD>
__global__ void __launch_bounds__(kThreads)
attention_dq_tc_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                       const bf16* __restrict__ dout, const float* __restrict__ lse,
                       const float* __restrict__ delta, bf16* __restrict__ dq, TcDims s, float scale) {
  constexpr int LD = HD + 8, KS = HD / 16, NT = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [64][LD]
  bf16* do_s = q_s + kRows * LD;                    // [64][LD]
  bf16* kv_s = do_s + kRows * LD;                   // 2 stages of K [64][LD], V [64][LD]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t T = s.T, b = blockIdx.z, h = blockIdx.y, kvh = h / s.group;
  // Last query tiles first: under the causal mask they see the most keys, so the longest blocks
  // start first and the tail of the grid is short.
  const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kRows;
  const int64_t q_last = min(T, q0 + kRows) - 1;
  const int64_t q_stride = s.H * HD, kv_stride = s.KV * HD;
  const bf16* kb = k + b * T * kv_stride + kvh * HD;
  const bf16* vb = v + b * T * kv_stride + kvh * HD;
  int64_t j_begin = s.window > 0 && q0 - s.window + 1 > 0 ? q0 - s.window + 1 : 0;
  j_begin = j_begin / kKeys * kKeys;
  const int64_t tiles = (q_last - j_begin) / kKeys + 1;
  load_rows_async<HD, LD>(q_s, q + b * T * q_stride + h * HD, q_stride, q0, T);
  load_rows_async<HD, LD>(do_s, dout + b * T * q_stride + h * HD, q_stride, q0, T);
  load_rows_async<HD, LD>(kv_s, kb, kv_stride, j_begin, T);
  load_rows_async<HD, LD>(kv_s + kKeys * LD, vb, kv_stride, j_begin, T);
  cp_async_commit();
  const int rw = warp * 16 + g;
  const int64_t row[2] = {q0 + rw, q0 + rw + 8};
  float lse2[2], dd[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = row[r] < T;
    lse2[r] = in ? lse[(b * s.H + h) * T + row[r]] * kLog2e : INFINITY;
    dd[r] = in ? delta[(b * s.H + h) * T + row[r]] : 0.0f;
  }
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  const int64_t warp_first = q0 + warp * 16, warp_last = warp_first + 15;
  for (int64_t it = 0; it < tiles; ++it) {
    const int64_t j0 = j_begin + it * kKeys;
    const bf16* k_s = next_kv_tile<HD, LD>(kv_s, it, tiles, kb, vb, kv_stride, j0 + kKeys, T);
    const bf16* v_s = k_s + kKeys * LD;
    const bool skip = warp_first >= T || j0 > warp_last || (s.window > 0 && j0 + kKeys - 1 <= warp_first - s.window);
    if (!skip) {
      float sc[8][4], dp[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[n][e] = dp[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t qa[4], da[4];
        load_a<LD>(qa, q_s, rw, kk * 16 + 2 * t);
        load_a<LD>(da, do_s, rw, kk * 16 + 2 * t);
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const bf16* kr = k_s + (n * 8 + g) * LD + kk * 16 + 2 * t;
          const bf16* vr = v_s + (n * 8 + g) * LD + kk * 16 + 2 * t;
          mma_bf16_16816(sc[n], qa, ld_shared_u32(kr), ld_shared_u32(kr + 8));
          mma_bf16_16816(dp[n], da, ld_shared_u32(vr), ld_shared_u32(vr + 8));
        }
      }
      const bool masked = j0 + kKeys - 1 > warp_first || (s.window > 0 && j0 <= warp_last - s.window);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const int64_t j = j0 + n * 8 + 2 * t + (e & 1);
          const bool vis = row[r] < T && (!masked || visible(row[r], j, s.window));
          const float p = vis ? exp2f(sc[n][e] * s.scale_log2 - lse2[r]) : 0.0f;
          dp[n][e] = p * (dp[n][e] - dd[r]);  // dS without the scale (applied once at the end)
        }
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        const uint32_t a[4] = {pack_bf16(dp[2 * j][0], dp[2 * j][1]), pack_bf16(dp[2 * j][2], dp[2 * j][3]),
                               pack_bf16(dp[2 * j + 1][0], dp[2 * j + 1][1]),
                               pack_bf16(dp[2 * j + 1][2], dp[2 * j + 1][3])};
#pragma unroll
        for (int dn = 0; dn < HD / 16; ++dn) {
          uint32_t b00, b01, b10, b11;
          ldmatrix_x4_trans(b00, b01, b10, b11, k_s + (j * 16 + (lane & 15)) * LD + dn * 16 + (lane >> 4) * 8);
          mma_bf16_16816(acc[2 * dn], a, b00, b01);
          mma_bf16_16816(acc[2 * dn + 1], a, b10, b11);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's copy
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= T) continue;
    bf16* out = dq + (b * T + row[r]) * q_stride + h * HD;
#pragma unroll
    for (int n = 0; n < NT; ++n)
      *reinterpret_cast<__nv_bfloat162*>(out + n * 8 + 2 * t) =
          __floats2bfloat162_rn(acc[n][2 * r] * scale, acc[n][2 * r + 1] * scale);
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
attention_dkdv_tc_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                         const bf16* __restrict__ dout, const float* __restrict__ lse,
                         const float* __restrict__ delta, bf16* __restrict__ dk, bf16* __restrict__ dv, TcDims s,
                         float scale) {
  constexpr int LD = HD + 8, KS = HD / 16, NT = HD / 8, BR = kBwdQueries;
  constexpr int kStage = 2 * BR * LD;  // bf16 elements of one stage: Q [BR][LD], dO [BR][LD]
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);  // [64][LD]
  bf16* v_s = k_s + kKeys * LD;                     // [64][LD]
  bf16* qd_s = v_s + kKeys * LD;                    // 2 stages of Q, dO
  float* ld_s = reinterpret_cast<float*>(qd_s + 2 * kStage);  // 2 stages of lse [BR], delta [BR]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t T = s.T, b = blockIdx.z, kvh = blockIdx.y;
  const int64_t j0 = int64_t(blockIdx.x) * kKeys;
  const int64_t q_stride = s.H * HD, kv_stride = s.KV * HD;
  // Rows that see a key of the tile: [j0, j0 + 63 + window - 1] (all rows >= j0 without a window).
  const int64_t i_begin = j0 / BR * BR;
  const int64_t i_end = s.window > 0 ? min(T, j0 + kKeys - 1 + s.window) : T;
  const int64_t per_head = (i_end - i_begin + BR - 1) / BR;
  const int64_t steps = s.group * per_head;  // (head of the group, query step) pairs, flattened
  auto issue = [&](int64_t step, int stage) {
    const int64_t h = kvh * s.group + step / per_head, i0 = i_begin + (step % per_head) * BR;
    bf16* st = qd_s + stage * kStage;
    load_rows_async<HD, LD, BR>(st, q + b * T * q_stride + h * HD, q_stride, i0, T);
    load_rows_async<HD, LD, BR>(st + BR * LD, dout + b * T * q_stride + h * HD, q_stride, i0, T);
    if (threadIdx.x < 2 * BR) {
      const int r = threadIdx.x % BR;
      const float* src = (threadIdx.x < BR ? lse : delta) + (b * s.H + h) * T;
      const bool in = i0 + r < T;
      cp_async4(ld_s + stage * 2 * BR + threadIdx.x, in ? src + i0 + r : src, in);
    }
    cp_async_commit();
  };
  load_rows_async<HD, LD>(k_s, k + b * T * kv_stride + kvh * HD, kv_stride, j0, T);
  load_rows_async<HD, LD>(v_s, v + b * T * kv_stride + kvh * HD, kv_stride, j0, T);
  issue(0, 0);  // the K/V copies join this first group
  const int kw = warp * 16;  // this warp's keys in the tile: kw..kw+15; this thread's: kw+g, kw+g+8
  const int64_t key[2] = {j0 + kw + g, j0 + kw + g + 8};
  const int64_t wk_first = j0 + kw, wk_last = wk_first + 15;
  float dka[NT][4], dva[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[n][e] = dva[n][e] = 0.0f;
  for (int64_t it = 0; it < steps; ++it) {
    const int64_t i0 = i_begin + (it % per_head) * BR;
    const bf16* q_s = qd_s + (it & 1) * kStage;
    const bf16* do_s = q_s + BR * LD;
    const float* lse_s = ld_s + (it & 1) * 2 * BR;  // natural log, 0 past T (masked below)
    const float* d_s = lse_s + BR;
    if (it + 1 < steps) {
      issue(it + 1, (it + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    // No row of this step sees any of the warp's keys (all keys after the last row, or every
    // key older than the first row's window)?
    const bool skip = wk_first >= T || wk_first > i0 + BR - 1 || (s.window > 0 && wk_last <= i0 - s.window);
    if (!skip) {
      float st[BR / 8][4], dpt[BR / 8][4];  // Sᵀ, dPᵀ: keys x queries
#pragma unroll
      for (int n = 0; n < BR / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        uint32_t ka[4], va[4];
        load_a<LD>(ka, k_s, kw + g, kk * 16 + 2 * t);
        load_a<LD>(va, v_s, kw + g, kk * 16 + 2 * t);
#pragma unroll
        for (int n = 0; n < BR / 8; ++n) {
          const bf16* qr = q_s + (n * 8 + g) * LD + kk * 16 + 2 * t;
          const bf16* dr = do_s + (n * 8 + g) * LD + kk * 16 + 2 * t;
          mma_bf16_16816(st[n], ka, ld_shared_u32(qr), ld_shared_u32(qr + 8));
          mma_bf16_16816(dpt[n], va, ld_shared_u32(dr), ld_shared_u32(dr + 8));
        }
      }
#pragma unroll
      for (int n = 0; n < BR / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = n * 8 + 2 * t + (e & 1);  // query within the step
          const int64_t i = i0 + c, j = key[e >> 1];
          const float p =
              i < T && visible(i, j, s.window) ? exp2f(st[n][e] * s.scale_log2 - lse_s[c] * kLog2e) : 0.0f;
          st[n][e] = p;
          dpt[n][e] = p * (dpt[n][e] - d_s[c]);
        }
#pragma unroll
      for (int j = 0; j < BR / 16; ++j) {
        const uint32_t pa[4] = {pack_bf16(st[2 * j][0], st[2 * j][1]), pack_bf16(st[2 * j][2], st[2 * j][3]),
                                pack_bf16(st[2 * j + 1][0], st[2 * j + 1][1]),
                                pack_bf16(st[2 * j + 1][2], st[2 * j + 1][3])};
        const uint32_t sa[4] = {pack_bf16(dpt[2 * j][0], dpt[2 * j][1]), pack_bf16(dpt[2 * j][2], dpt[2 * j][3]),
                                pack_bf16(dpt[2 * j + 1][0], dpt[2 * j + 1][1]),
                                pack_bf16(dpt[2 * j + 1][2], dpt[2 * j + 1][3])};
#pragma unroll
        for (int dn = 0; dn < HD / 16; ++dn) {
          uint32_t b00, b01, b10, b11;
          const int off = (j * 16 + (lane & 15)) * LD + dn * 16 + (lane >> 4) * 8;
          ldmatrix_x4_trans(b00, b01, b10, b11, do_s + off);
          mma_bf16_16816(dva[2 * dn], pa, b00, b01);
          mma_bf16_16816(dva[2 * dn + 1], pa, b10, b11);
          ldmatrix_x4_trans(b00, b01, b10, b11, q_s + off);
          mma_bf16_16816(dka[2 * dn], sa, b00, b01);
          mma_bf16_16816(dka[2 * dn + 1], sa, b10, b11);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's copy
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= T) continue;
    const int64_t base = (b * T + key[r]) * kv_stride + kvh * HD;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(dk + base + n * 8 + 2 * t) =
          __floats2bfloat162_rn(dka[n][2 * r] * scale, dka[n][2 * r + 1] * scale);
      *reinterpret_cast<__nv_bfloat162*>(dv + base + n * 8 + 2 * t) =
          __floats2bfloat162_rn(dva[n][2 * r], dva[n][2 * r + 1]);
    }
  }
}

template <typename K>
void prepare(K kernel, size_t smem) {
  if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

template <int HD>
void launch_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                     const Tensor& delta, const AttentionShape& a, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t B = a.batch, T = a.seq, H = a.heads, KV = a.kv_heads;
  const TcDims s{T, H, KV, H / KV, a.window, a.scale * kLog2e};
  cudaStream_t st = stream_for(q.device());
  constexpr int LD = HD + 8;
  const size_t dq_smem = 6 * 64 * LD * sizeof(bf16);  // Q, dO + 2 stages of K, V
  const size_t kv_smem = (2 * 64 + 4 * kBwdQueries) * LD * sizeof(bf16) + 4 * kBwdQueries * sizeof(float);
  prepare(attention_dq_tc_kernel<HD>, dq_smem);
  prepare(attention_dkdv_tc_kernel<HD>, kv_smem);
  const dim3 dq_grid(static_cast<unsigned>((T + kRows - 1) / kRows), unsigned(H), unsigned(B));
  attention_dq_tc_kernel<HD><<<dq_grid, kThreads, dq_smem, st>>>(
      q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), dout.data<bf16>(), lse.data<float>(), delta.data<float>(),
      dq.data<bf16>(), s, a.scale);
  LR_CUDA_LAUNCHED();
  const dim3 kv_grid(static_cast<unsigned>((T + kKeys - 1) / kKeys), unsigned(KV), unsigned(B));
  attention_dkdv_tc_kernel<HD><<<kv_grid, kThreads, kv_smem, st>>>(
      q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), dout.data<bf16>(), lse.data<float>(), delta.data<float>(),
      dk.data<bf16>(), dv.data<bf16>(), s, a.scale);
  LR_CUDA_LAUNCHED();
}

}  // namespace

void attention_backward_tc(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                           const Tensor& delta, const AttentionShape& a, Tensor& dq, Tensor& dk, Tensor& dv) {
  if (a.head_dim == 64) launch_backward<64>(dout, q, k, v, lse, delta, a, dq, dk, dv);
  else launch_backward<128>(dout, q, k, v, lse, delta, a, dq, dk, dv);
}

}  // namespace lowrank::cuda
