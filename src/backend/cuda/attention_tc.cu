// Tensor-core attention forward for bf16 with head_dim 64 or 128 (FlashAttention-2's layout):
// a block of 4 warps owns 64 query rows (16 per warp, Q fragments in registers for the whole
// pass); K and V stream through shared memory in tiles of 64 keys. Per tile and warp:
// S = Q Kᵀ (mma m16n8k16, f32 accumulators), causal / window mask, online softmax in the log2
// domain (scale·log2 e folded into one multiply), P rounded to bf16 and O += P V (V fragments by
// ldmatrix.trans). Row sums stay per thread until the end (the 4 lanes of a row share the
// rescaling factor). The same lse [B, H, T] as the generic kernel is written, so either backward
// can follow either forward.
#include "attention.h"
#include "common.cuh"
#include "attention_tc.cuh"
#include "mma.cuh"

namespace lowrank::cuda {
namespace {

using namespace tc;

template <int HD>
__global__ void __launch_bounds__(kThreads)
attention_forward_tc_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                            bf16* __restrict__ out, float* __restrict__ lse, TcDims s) {
  constexpr int LD = HD + 8;  // 16-byte row padding: conflict-free fragment loads and ldmatrix
  constexpr int KS = HD / 16, NT = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [64][LD]
  bf16* kv_s = q_s + kRows * LD;                    // 2 stages of K [64][LD] then V [64][LD]
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

  // Pipeline: tile it+1 is copied (cp.async) while tile it is computed.
  load_rows_async<HD, LD>(q_s, q + b * T * q_stride + h * HD, q_stride, q0, T);
  load_rows_async<HD, LD>(kv_s, kb, kv_stride, j_begin, T);
  load_rows_async<HD, LD>(kv_s + kKeys * LD, vb, kv_stride, j_begin, T);
  cp_async_commit();

  const int rw = warp * 16 + g;  // this thread's rows in the block: rw and rw + 8
  uint32_t qf[KS][4];
  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const int64_t row[2] = {q0 + rw, q0 + rw + 8};
  const int64_t warp_first = q0 + warp * 16, warp_last = warp_first + 15;

  for (int64_t it = 0; it < tiles; ++it) {
    const int64_t j0 = j_begin + it * kKeys;
    const bf16* k_s = next_kv_tile<HD, LD>(kv_s, it, tiles, kb, vb, kv_stride, j0 + kKeys, T);
    const bf16* v_s = k_s + kKeys * LD;
    if (it == 0) {
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) load_a<LD>(qf[kk], q_s, rw, kk * 16 + 2 * t);
    }
    // Whole tile invisible to this warp's rows (above the diagonal, or left of every window)?
    const bool skip = warp_first >= T || j0 > warp_last || (s.window > 0 && j0 + kKeys - 1 <= warp_first - s.window);
    if (!skip) {
      float sc[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          const bf16* kr = k_s + (n * 8 + g) * LD + kk * 16 + 2 * t;
          mma_bf16_16816(sc[n], qf[kk], ld_shared_u32(kr), ld_shared_u32(kr + 8));
        }
      }
      // Only tiles on the diagonal or a window edge need the per-element mask.
      const bool masked = j0 + kKeys - 1 > warp_first || (s.window > 0 && j0 <= warp_last - s.window);
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          float x = sc[n][e] * s.scale_log2;
          if (masked) {
            const int64_t j = j0 + n * 8 + 2 * t + (e & 1);
            if (!visible(row[r], j, s.window)) x = -INFINITY;
          }
          sc[n][e] = x;
          mx[r] = fmaxf(mx[r], x);
        }
      float base[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = fmaxf(m[r], mx[r]);
        base[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays at 0
        const float corr = exp2f(m[r] - base[r]);
        m[r] = m_new;
        l[r] *= corr;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          o[n][2 * r] *= corr;
          o[n][2 * r + 1] *= corr;
        }
      }
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[n][e] = exp2f(sc[n][e] - base[e >> 1]);
          l[e >> 1] += sc[n][e];
        }
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        const uint32_t a[4] = {pack_bf16(sc[2 * j][0], sc[2 * j][1]), pack_bf16(sc[2 * j][2], sc[2 * j][3]),
                               pack_bf16(sc[2 * j + 1][0], sc[2 * j + 1][1]),
                               pack_bf16(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
        for (int dn = 0; dn < HD / 16; ++dn) {
          uint32_t b00, b01, b10, b11;
          ldmatrix_x4_trans(b00, b01, b10, b11, v_s + (j * 16 + (lane & 15)) * LD + dn * 16 + (lane >> 4) * 8);
          mma_bf16_16816(o[2 * dn], a, b00, b01);
          mma_bf16_16816(o[2 * dn + 1], a, b10, b11);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's copy
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (row[r] >= T) continue;
    const float inv = 1.0f / l[r];
    bf16* orow = out + (b * T + row[r]) * q_stride + h * HD;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
      *reinterpret_cast<__nv_bfloat162*>(orow + n * 8 + 2 * t) = pair;
    }
    if (t == 0) lse[(b * s.H + h) * T + row[r]] = (m[r] + log2f(l[r])) * 0.6931471805599453f;
  }
}

}  // namespace

bool attention_tc_supported(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s) {
  return q.dtype() == DType::BF16 && (s.head_dim == 64 || s.head_dim == 128) && aligned16(q) && aligned16(k) &&
         aligned16(v) && s.seq > 0;
}

Tensor attention_tc(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& a, Tensor* lse_out) {
  const int64_t B = a.batch, T = a.seq, H = a.heads, hd = a.head_dim;
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({B, H, T}, DType::F32, q.device());
  const TcDims s{T, H, a.kv_heads, H / a.kv_heads, a.window, a.scale * 1.4426950408889634f};
  const dim3 grid(static_cast<unsigned>((T + kRows - 1) / kRows), unsigned(H), unsigned(B));
  cudaStream_t st = stream_for(q.device());
  auto launch = [&](auto kernel, int HD) {
    const size_t smem = 5 * 64 * (HD + 8) * sizeof(bf16);  // Q + 2 stages of K, V
    if (smem > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, kThreads, smem, st>>>(q.data<bf16>(), k.data<bf16>(), v.data<bf16>(), out.data<bf16>(),
                                         lse.data<float>(), s);
  };
  if (hd == 64) launch(attention_forward_tc_kernel<64>, 64);
  else launch(attention_forward_tc_kernel<128>, 128);
  LR_CUDA_LAUNCHED();
  if (lse_out) *lse_out = lse;
  return out;
}

}  // namespace lowrank::cuda
