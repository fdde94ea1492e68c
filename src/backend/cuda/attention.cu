// Fused causal attention (GQA, optional sliding window), flash-style: K/V stream through shared
// memory in tiles of 32 keys, each query row keeps a running max / sum / output (online softmax),
// and only the log-sum-exp [B, H, T] is saved. No [T × T] buffer exists at any point.
// This is the generic path (any head_dim <= 256, f32 or bf16, f32 math on CUDA cores): one warp
// per query row, one lane per key of the tile for the scores, one lane per 32nd column of the
// head for the output.
// Backward (FlashAttention-2's recomputation, split in two kernels so that nothing is added with
// atomics and the result is deterministic):
//   D_i = dO_i · O_i;  P_ij = exp(scale q_i·k_j - lse_i);  dS_ij = P_ij (dO_i·v_j - D_i) scale
//   (with soft-capping, Gemma 2: the score is c = cap tanh(scale q_i·k_j / cap) and dS_ij gains the
//   factor 1 - (c / cap)²; only this path has it)
//   dq kernel   (query-major, like the forward):   dq_i = Σ_j dS_ij k_j
//   dkdv kernel (key-major, loops over the group's heads and the rows that see the tile):
//               dk_j = Σ_i dS_ij q_i,  dv_j = Σ_i P_ij dO_i
#include <atomic>
#include <cstdlib>
#include <string>

#include "attention.h"
#include "attention_cudnn.h"
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/core/shapes_vary.h"

namespace lowrank::cuda {
namespace {

constexpr int kWarps = 8;        // per block
constexpr int kRowsPerWarp = 2;  // query rows per warp (forward and dq)
constexpr int kTileKeys = 32;    // keys per tile: one per lane
constexpr int kMaxChunks = 8;    // head_dim <= 32 * kMaxChunks
constexpr int kBlockRows = kWarps * kRowsPerWarp;

struct Dims {
  int64_t T, H, KV, hd, group, window;
  float scale;
  float softcap;  // 0: none (the cuDNN and tensor-core paths have none: soft-capped shapes run here)
};

// A scaled score → its soft-capped value (Gemma 2: cap · tanh(s / cap)).
__device__ __forceinline__ float capped(float score, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(score / softcap) : score;
}

// d capped / d score from the capped value c: 1 - (c / cap)².
__device__ __forceinline__ float capped_slope(float c, float softcap) {
  if (softcap <= 0.0f) return 1.0f;
  const float t = c / softcap;
  return 1.0f - t * t;
}

// Is key j visible from query row i?
__device__ __forceinline__ bool visible(int64_t i, int64_t j, int64_t window) {
  return j <= i && (window <= 0 || j > i - window);
}

// Loads rows [j0, j0 + 32) of a K or V head into shared f32 [32][ld] (rows past `end` are zero).
template <typename T>
__device__ void load_tile(float* dst, int ld, const T* __restrict__ src, int64_t row_stride, int64_t j0,
                          int64_t end, int64_t hd) {
  for (int64_t e = threadIdx.x; e < kTileKeys * hd; e += blockDim.x) {
    const int64_t r = e / hd, c = e % hd;
    dst[r * ld + c] = j0 + r < end ? to_f32(src[(j0 + r) * row_stride + c]) : 0.0f;
  }
}

// ---- forward ----
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ out, float* __restrict__ lse, Dims s) {
  extern __shared__ float smem[];
  const int64_t hd = s.hd, T_ = s.T;
  const int ldk = static_cast<int>(hd) + 1;  // padded: lane j reads row j
  float* q_s = smem;                          // [kBlockRows][hd]
  float* k_s = q_s + kBlockRows * hd;         // [32][hd + 1]
  float* v_s = k_s + kTileKeys * ldk;         // [32][hd]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, h = blockIdx.y, kvh = h / s.group;
  const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kBlockRows;  // longest (last) tiles first
  const int64_t q_last = min(T_, q0 + kBlockRows) - 1;
  const int64_t q_stride = s.H * hd, kv_stride = s.KV * hd;
  const T* qb = q + b * T_ * q_stride + h * hd;
  const T* kb = k + b * T_ * kv_stride + kvh * hd;
  const T* vb = v + b * T_ * kv_stride + kvh * hd;

  for (int64_t e = threadIdx.x; e < kBlockRows * hd; e += blockDim.x) {
    const int64_t r = e / hd, c = e % hd;
    q_s[e] = q0 + r < T_ ? to_f32(qb[(q0 + r) * q_stride + c]) * s.scale : 0.0f;  // scale folded into q
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kMaxChunks];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) o[r][c] = 0.0f;
  }
  const int64_t k_begin = s.window > 0 && q0 - s.window + 1 > 0 ? q0 - s.window + 1 : 0;
  for (int64_t j0 = k_begin; j0 <= q_last; j0 += kTileKeys) {
    __syncthreads();  // previous tile fully used (and q_s written, first time)
    load_tile(k_s, ldk, kb, kv_stride, j0, q_last + 1, hd);
    load_tile(v_s, static_cast<int>(hd), vb, kv_stride, j0, q_last + 1, hd);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t i = q0 + row, j = j0 + lane;
      if (i >= T_) continue;  // warp-uniform
      float sc = -INFINITY;
      if (visible(i, j, s.window)) {
        const float* qr = q_s + row * hd;
        const float* kr = k_s + lane * ldk;
        float dot = 0.0f;
        for (int64_t d = 0; d < hd; ++d) dot += qr[d] * kr[d];
        sc = capped(dot, s.softcap);
      }
      const float tile_max = warp_max(sc);
      if (tile_max == -INFINITY) continue;  // no visible key in this tile for row i
      const float m_new = fmaxf(m[r], tile_max);
      const float corr = expf(m[r] - m_new);
      const float p = sc == -INFINITY ? 0.0f : expf(sc - m_new);
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kMaxChunks; ++c) o[r][c] *= corr;
      for (int jj = 0; jj < kTileKeys; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == 0.0f) continue;  // warp-uniform (broadcast value)
        const float* vr = v_s + jj * hd;
#pragma unroll
        for (int c = 0; c < kMaxChunks; ++c)
          if (lane + 32 * c < hd) o[r][c] += pj * vr[lane + 32 * c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = q0 + warp * kRowsPerWarp + r;
    if (i >= T_) continue;
    const float inv = 1.0f / l[r];
    T* orow = out + (b * T_ + i) * q_stride + h * hd;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c)
      if (lane + 32 * c < hd) orow[lane + 32 * c] = from_f32<T>(o[r][c] * inv);
    if (lane == 0) lse[(b * s.H + h) * T_ + i] = m[r] + logf(l[r]);
  }
}

// ---- backward: D_i = dO_i · O_i ----
template <typename T>
__global__ void attention_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                       float* __restrict__ delta, int64_t rows, int64_t H, int64_t T_, int64_t hd) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t gw = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; gw < rows * H; gw += warps) {
    const int64_t tok = gw / H, h = gw % H;  // one warp per (token, head)
    const T* a = dout + tok * H * hd + h * hd;
    const T* o = out + tok * H * hd + h * hd;
    float sum = 0.0f;
    for (int64_t d = lane; d < hd; d += 32) sum += to_f32(a[d]) * to_f32(o[d]);
    sum = warp_sum(sum);
    const int64_t b = tok / T_, i = tok % T_;
    if (lane == 0) delta[(b * H + h) * T_ + i] = sum;
  }
}

// ---- backward: dq (query-major) ----
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
attention_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                    T* __restrict__ dq, Dims s) {
  extern __shared__ float smem[];
  const int64_t hd = s.hd, T_ = s.T;
  const int ldk = static_cast<int>(hd) + 1;
  float* q_s = smem;                        // [kBlockRows][hd], pre-scaled
  float* do_s = q_s + kBlockRows * hd;      // [kBlockRows][hd]
  float* k_s = do_s + kBlockRows * hd;      // [32][hd + 1]
  float* v_s = k_s + kTileKeys * ldk;       // [32][hd + 1]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, h = blockIdx.y, kvh = h / s.group;
  const int64_t q0 = int64_t(gridDim.x - 1 - blockIdx.x) * kBlockRows;  // longest (last) tiles first
  const int64_t q_last = min(T_, q0 + kBlockRows) - 1;
  const int64_t q_stride = s.H * hd, kv_stride = s.KV * hd;
  const T* kb = k + b * T_ * kv_stride + kvh * hd;
  const T* vb = v + b * T_ * kv_stride + kvh * hd;
  for (int64_t e = threadIdx.x; e < kBlockRows * hd; e += blockDim.x) {
    const int64_t r = e / hd, c = e % hd, tok = b * T_ + q0 + r;
    const bool in = q0 + r < T_;
    q_s[e] = in ? to_f32(q[tok * q_stride + h * hd + c]) * s.scale : 0.0f;
    do_s[e] = in ? to_f32(dout[tok * q_stride + h * hd + c]) : 0.0f;
  }
  float lse_r[kRowsPerWarp], delta_r[kRowsPerWarp], acc[kRowsPerWarp][kMaxChunks];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = q0 + warp * kRowsPerWarp + r;
    lse_r[r] = i < T_ ? lse[(b * s.H + h) * T_ + i] : 0.0f;
    delta_r[r] = i < T_ ? delta[(b * s.H + h) * T_ + i] : 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c) acc[r][c] = 0.0f;
  }
  const int64_t k_begin = s.window > 0 && q0 - s.window + 1 > 0 ? q0 - s.window + 1 : 0;
  for (int64_t j0 = k_begin; j0 <= q_last; j0 += kTileKeys) {
    __syncthreads();
    load_tile(k_s, ldk, kb, kv_stride, j0, q_last + 1, hd);
    load_tile(v_s, ldk, vb, kv_stride, j0, q_last + 1, hd);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t i = q0 + row, j = j0 + lane;
      if (i >= T_) continue;
      float ds = 0.0f;
      if (visible(i, j, s.window)) {
        const float* qr = q_s + row * hd;
        const float* dr = do_s + row * hd;
        const float* kr = k_s + lane * ldk;
        const float* vr = v_s + lane * ldk;
        float qk = 0.0f, dp = 0.0f;
        for (int64_t d = 0; d < hd; ++d) {
          qk += qr[d] * kr[d];
          dp += dr[d] * vr[d];
        }
        const float sc = capped(qk, s.softcap);
        const float p = expf(sc - lse_r[r]);
        ds = p * (dp - delta_r[r]) * s.scale * capped_slope(sc, s.softcap);
      }
      for (int jj = 0; jj < kTileKeys; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
        if (dsj == 0.0f) continue;
        const float* kr = k_s + jj * ldk;
#pragma unroll
        for (int c = 0; c < kMaxChunks; ++c)
          if (lane + 32 * c < hd) acc[r][c] += dsj * kr[lane + 32 * c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = q0 + warp * kRowsPerWarp + r;
    if (i >= T_) continue;
    T* drow = dq + (b * T_ + i) * q_stride + h * hd;
#pragma unroll
    for (int c = 0; c < kMaxChunks; ++c)
      if (lane + 32 * c < hd) drow[lane + 32 * c] = from_f32<T>(acc[r][c]);
  }
}

// ---- backward: dk, dv (key-major) ----
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
attention_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                      const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                      T* __restrict__ dk, T* __restrict__ dv, Dims s) {
  extern __shared__ float smem[];
  const int64_t hd = s.hd, T_ = s.T;
  const int ldk = static_cast<int>(hd) + 1;
  float* k_s = smem;                        // [32][hd + 1]
  float* v_s = k_s + kTileKeys * ldk;       // [32][hd + 1]
  float* dk_s = v_s + kTileKeys * ldk;      // [32][hd] accumulators, each element owned by one thread
  float* dv_s = dk_s + kTileKeys * hd;      // [32][hd]
  float* q_s = dv_s + kTileKeys * hd;       // [kWarps][hd]
  float* do_s = q_s + kWarps * hd;          // [kWarps][hd]
  float* p_s = do_s + kWarps * hd;          // [kWarps][32]
  float* ds_s = p_s + kWarps * kTileKeys;   // [kWarps][32]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, kvh = blockIdx.y;
  const int64_t j0 = int64_t(blockIdx.x) * kTileKeys;
  const int64_t q_stride = s.H * hd, kv_stride = s.KV * hd;
  load_tile(k_s, ldk, k + b * T_ * kv_stride + kvh * hd, kv_stride, j0, T_, hd);
  load_tile(v_s, ldk, v + b * T_ * kv_stride + kvh * hd, kv_stride, j0, T_, hd);
  for (int64_t e = threadIdx.x; e < kTileKeys * hd; e += blockDim.x) dk_s[e] = dv_s[e] = 0.0f;
  // Rows that see any key of the tile: [j0, j0 + 31 + window - 1] (all rows >= j0 without window).
  const int64_t i_end = s.window > 0 ? min(T_, j0 + kTileKeys - 1 + s.window) : T_;
  for (int64_t g = 0; g < s.group; ++g) {
    const int64_t h = kvh * s.group + g;
    for (int64_t i0 = j0; i0 < i_end; i0 += kWarps) {
      __syncthreads();  // tiles loaded / previous chunk's q_s, p_s fully used
      for (int64_t e = threadIdx.x; e < kWarps * hd; e += blockDim.x) {
        const int64_t r = e / hd, c = e % hd, tok = b * T_ + i0 + r;
        const bool in = i0 + r < i_end;
        q_s[e] = in ? to_f32(q[tok * q_stride + h * hd + c]) : 0.0f;
        do_s[e] = in ? to_f32(dout[tok * q_stride + h * hd + c]) : 0.0f;
      }
      __syncthreads();
      {
        const int64_t i = i0 + warp, j = j0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (i < i_end && j < T_ && visible(i, j, s.window)) {
          const float* qr = q_s + warp * hd;
          const float* dr = do_s + warp * hd;
          const float* kr = k_s + lane * ldk;
          const float* vr = v_s + lane * ldk;
          float qk = 0.0f, dp = 0.0f;
          for (int64_t d = 0; d < hd; ++d) {
            qk += qr[d] * kr[d];
            dp += dr[d] * vr[d];
          }
          const int64_t li = (b * s.H + h) * T_ + i;
          const float sc = capped(qk * s.scale, s.softcap);
          p = expf(sc - lse[li]);
          ds = p * (dp - delta[li]) * s.scale * capped_slope(sc, s.softcap);
        }
        p_s[warp * kTileKeys + lane] = p;
        ds_s[warp * kTileKeys + lane] = ds;
      }
      __syncthreads();
      for (int64_t e = threadIdx.x; e < kTileKeys * hd; e += blockDim.x) {
        const int64_t j = e / hd, c = e % hd;
        float a = 0.0f, bv = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          a += ds_s[w * kTileKeys + j] * q_s[w * hd + c];
          bv += p_s[w * kTileKeys + j] * do_s[w * hd + c];
        }
        dk_s[e] += a;
        dv_s[e] += bv;
      }
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kTileKeys * hd; e += blockDim.x) {
    const int64_t j = e / hd, c = e % hd;
    if (j0 + j >= T_) continue;
    const int64_t idx = (b * T_ + j0 + j) * kv_stride + kvh * hd + c;
    dk[idx] = from_f32<T>(dk_s[e]);
    dv[idx] = from_f32<T>(dv_s[e]);
  }
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  LR_CHECK(bytes <= 227 * 1024, "attention: shared memory ", bytes, " bytes");
  if (bytes > 48 * 1024) LR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

Dims dims_of(const AttentionShape& a) {
  return Dims{a.seq, a.heads, a.kv_heads, a.head_dim, a.heads / a.kv_heads, a.window, a.scale, a.softcap};
}

}  // namespace

void check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s) {
  check_arg(q, op, "q");
  check_arg(k, op, "k");
  check_arg(v, op, "v");
  const int64_t B = s.batch, T = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  LR_CHECK(B > 0 && T >= 0 && H > 0 && KV > 0 && hd > 0 && H % KV == 0, op, ": bad shape B=", B, " T=", T, " H=", H,
           " KV=", KV, " hd=", hd);
  LR_CHECK(q.rank() == 2 && q.dim(0) == B * T && q.dim(1) == H * hd && k.rank() == 2 && k.dim(0) == B * T &&
               k.dim(1) == KV * hd && v.shape() == k.shape(),
           op, " shapes ", q.str(), " ", k.str(), " ", v.str());
  LR_CHECK(q.dtype() == k.dtype() && k.dtype() == v.dtype(), op, ": q, k, v dtypes differ: ", q.str(), " ", k.str(),
           " ", v.str());
  if (hd > 32 * kMaxChunks) throw error(op, ": head_dim ", hd, " is not supported by the CUDA kernel (at most ", 32 * kMaxChunks, ")");
  LR_CHECK(B <= 65535 && H <= 65535, op, ": grid too large");
}

Tensor attention_generic(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& a, Tensor* lse_out) {
  const int64_t B = a.batch, T = a.seq, H = a.heads, hd = a.head_dim;
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({B, H, T}, DType::F32, q.device());
  if (T > 0) {
    const Dims s = dims_of(a);
    const size_t smem = (kBlockRows * hd + kTileKeys * (hd + 1) + kTileKeys * hd) * sizeof(float);
    const dim3 grid(static_cast<unsigned>((T + kBlockRows - 1) / kBlockRows), unsigned(H), unsigned(B));
    cudaStream_t st = stream_for(q.device());
    LR_FLOAT_TYPES(q.dtype(), Tp, {
      set_smem(attention_forward_kernel<Tp>, smem);
      attention_forward_kernel<Tp><<<grid, kWarps * 32, smem, st>>>(q.data<Tp>(), k.data<Tp>(), v.data<Tp>(),
                                                                    out.data<Tp>(), lse.data<float>(), s);
    });
    LR_CUDA_LAUNCHED();
  }
  if (lse_out) *lse_out = lse;
  return out;
}

Tensor attention_delta(const Tensor& dout, const Tensor& out, const AttentionShape& a) {
  const int64_t B = a.batch, T = a.seq, H = a.heads, hd = a.head_dim;
  Tensor delta = Tensor::empty({B, H, T}, DType::F32, out.device());
  if (T == 0) return delta;
  cudaStream_t st = stream_for(out.device());
  LR_FLOAT_TYPES(out.dtype(), Tp,
      attention_delta_kernel<Tp><<<grid_for(B * T * H * 32, 256), 256, 0, st>>>(dout.data<Tp>(), out.data<Tp>(),
                                                                               delta.data<float>(), B * T, H, T, hd));
  LR_CUDA_LAUNCHED();
  return delta;
}

void attention_backward_generic(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                const Tensor& lse, const Tensor& delta, const AttentionShape& a, Tensor& dq,
                                Tensor& dk, Tensor& dv) {
  const int64_t B = a.batch, T = a.seq, H = a.heads, KV = a.kv_heads, hd = a.head_dim;
  const Dims s = dims_of(a);
  cudaStream_t st = stream_for(q.device());
  const size_t dq_smem = (2 * kBlockRows * hd + 2 * kTileKeys * (hd + 1)) * sizeof(float);
  const size_t kv_smem =
      (2 * kTileKeys * (hd + 1) + 2 * kTileKeys * hd + 2 * kWarps * hd + 2 * kWarps * kTileKeys) * sizeof(float);
  const dim3 dq_grid(static_cast<unsigned>((T + kBlockRows - 1) / kBlockRows), unsigned(H), unsigned(B));
  const dim3 kv_grid(static_cast<unsigned>((T + kTileKeys - 1) / kTileKeys), unsigned(KV), unsigned(B));
  LR_FLOAT_TYPES(q.dtype(), Tp, {
    set_smem(attention_dq_kernel<Tp>, dq_smem);
    attention_dq_kernel<Tp><<<dq_grid, kWarps * 32, dq_smem, st>>>(q.data<Tp>(), k.data<Tp>(), v.data<Tp>(),
                                                                   dout.data<Tp>(), lse.data<float>(),
                                                                   delta.data<float>(), dq.data<Tp>(), s);
    LR_CUDA_LAUNCHED();
    set_smem(attention_dkdv_kernel<Tp>, kv_smem);
    attention_dkdv_kernel<Tp><<<kv_grid, kWarps * 32, kv_smem, st>>>(q.data<Tp>(), k.data<Tp>(), v.data<Tp>(),
                                                                     dout.data<Tp>(), lse.data<float>(),
                                                                     delta.data<float>(), dk.data<Tp>(),
                                                                     dv.data<Tp>(), s);
  });
  LR_CUDA_LAUNCHED();
}

namespace {
// LOWRANK_ATTENTION=generic in the environment starts with the generic kernels (a fallback that
// needs no rebuild); set_attention_path overrides it.
int initial_path() {
  const char* e = std::getenv("LOWRANK_ATTENTION");
  return static_cast<int>(e && std::string(e) == "generic" ? AttentionPath::Generic : AttentionPath::Auto);
}
std::atomic<int> g_path{initial_path()};
}

void set_attention_path(AttentionPath p) { g_path = static_cast<int>(p); }

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse) {
  check_attention_args("attention", q, k, v, s);
  const auto path = static_cast<AttentionPath>(g_path.load());
  // Soft-capped scores (Gemma 2) only have the generic kernels.
  if (s.softcap > 0) {
    LR_CHECK(path == AttentionPath::Auto || path == AttentionPath::Generic,
             "attention: soft-capping runs on the generic kernels only");
    return attention_generic(q, k, v, s, lse);
  }
  if (shapes_vary() && !lse && path == AttentionPath::Auto) {  // no plan per shape
    Tensor out = attention_varying(q, k, v, s);
    if (out.defined()) return out;
  }
  if (path == AttentionPath::Auto || path == AttentionPath::Cudnn) {
    std::string why;
    Tensor out, l;
    if (attention_cudnn(q, k, v, s, out, l, &why)) {
      if (lse) *lse = l;
      return out;
    }
    LR_CHECK(path != AttentionPath::Cudnn, "attention: cuDNN path unavailable for ", q.str(), " head_dim ",
             s.head_dim, ": ", why);
  }
  if (path != AttentionPath::Generic && attention_tc_supported(q, k, v, s)) return attention_tc(q, k, v, s, lse);
  LR_CHECK(path != AttentionPath::TensorCore, "attention: no tensor-core kernel for ", q.str(), " head_dim ",
           s.head_dim);
  return attention_generic(q, k, v, s, lse);
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) {
  check_attention_args("attention_backward", q, k, v, s);
  check_arg(dout, "attention_backward", "dout");
  check_arg(out, "attention_backward", "out");
  LR_CHECK(dout.shape() == q.shape() && out.shape() == q.shape() && dout.dtype() == q.dtype() &&
               out.dtype() == q.dtype(),
           "attention_backward dout ", dout.str(), " out ", out.str(), " for q ", q.str());
  LR_CHECK(lse.dtype() == DType::F32 && lse.numel() == s.batch * s.heads * s.seq, "attention_backward lse ", lse.str());
  dq = Tensor::empty(q.shape(), q.dtype(), q.device());
  dk = Tensor::empty(k.shape(), k.dtype(), k.device());
  dv = Tensor::empty(v.shape(), v.dtype(), v.device());
  if (s.seq == 0) return;
  const auto path = static_cast<AttentionPath>(g_path.load());
  if (s.softcap > 0) {
    LR_CHECK(path == AttentionPath::Auto || path == AttentionPath::Generic,
             "attention_backward: soft-capping runs on the generic kernels only");
    return attention_backward_generic(dout, q, k, v, lse, attention_delta(dout, out, s), s, dq, dk, dv);
  }
  if (path == AttentionPath::Auto || path == AttentionPath::Cudnn) {
    std::string why;
    if (attention_backward_cudnn(dout, q, k, v, out, lse, s, dq, dk, dv, &why)) return;
    LR_CHECK(path != AttentionPath::Cudnn, "attention_backward: cuDNN path unavailable for ", q.str(),
             " head_dim ", s.head_dim, ": ", why);
  }
  const Tensor delta = attention_delta(dout, out, s);
  const bool aligned = reinterpret_cast<uintptr_t>(dout.raw()) % 16 == 0;
  if (path != AttentionPath::Generic && aligned && attention_tc_supported(q, k, v, s))
    return attention_backward_tc(dout, q, k, v, lse, delta, s, dq, dk, dv);
  LR_CHECK(path != AttentionPath::TensorCore, "attention_backward: no tensor-core kernel for ", q.str(),
           " head_dim ", s.head_dim);
  attention_backward_generic(dout, q, k, v, lse, delta, s, dq, dk, dv);
}

namespace {

// The packed ops' column blocks copied apart (the paths that take dense q, k, v).
struct Split {
  Tensor q, k, v;
};

Split split(const Tensor& qkv, const AttentionShape& s) {
  const int64_t rows = qkv.dim(0), wq = s.heads * s.head_dim, wk = s.kv_heads * s.head_dim;
  Split out{Tensor::empty({rows, wq}, qkv.dtype(), qkv.device()), Tensor::empty({rows, wk}, qkv.dtype(), qkv.device()),
            Tensor::empty({rows, wk}, qkv.dtype(), qkv.device())};
  copy_columns_(out.q, 0, qkv, 0, wq);
  copy_columns_(out.k, 0, qkv, wq, wk);
  copy_columns_(out.v, 0, qkv, wq + wk, wk);
  return out;
}

// cuDNN reads (and writes) the blocks in place through its tensor strides where it applies.
bool cudnn_packed(const AttentionShape& s) {
  const auto path = static_cast<AttentionPath>(g_path.load());
  return s.softcap == 0 && (path == AttentionPath::Auto || path == AttentionPath::Cudnn) &&
         !(shapes_vary() && path == AttentionPath::Auto);
}

}  // namespace

Tensor attention_packed(const Tensor& qkv, const AttentionShape& s, Tensor* lse) {
  check_arg(qkv, "attention_packed", "qkv");
  if (cudnn_packed(s) && s.seq > 0) {
    Tensor out, l;
    if (attention_cudnn_packed(qkv, s, out, l, nullptr)) {
      if (lse) *lse = l;
      return out;
    }
  }
  const Split p = split(qkv, s);
  return attention(p.q, p.k, p.v, s, lse);
}

void attention_backward_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                               const AttentionShape& s, Tensor& dqkv) {
  check_arg(qkv, "attention_backward_packed", "qkv");
  check_arg(dout, "attention_backward_packed", "dout");
  check_arg(out, "attention_backward_packed", "out");
  dqkv = Tensor::empty(qkv.shape(), qkv.dtype(), qkv.device());
  if (s.seq == 0) return;
  if (cudnn_packed(s)) {
    LR_CHECK(dout.dtype() == qkv.dtype() && out.dtype() == qkv.dtype() && dout.dim(0) == qkv.dim(0) &&
                 dout.shape() == out.shape() && dout.dim(1) == s.heads * s.head_dim,
             "attention_backward_packed dout ", dout.str(), " out ", out.str(), " for qkv ", qkv.str());
    LR_CHECK(lse.dtype() == DType::F32 && lse.numel() == s.batch * s.heads * s.seq, "attention_backward_packed lse ",
             lse.str());
    if (attention_backward_cudnn_packed(dout, qkv, out, lse, s, dqkv, nullptr)) return;
  }
  const Split p = split(qkv, s);
  Tensor dq, dk, dv;
  attention_backward(dout, p.q, p.k, p.v, out, lse, s, dq, dk, dv);
  int64_t col = 0;
  for (const Tensor* t : {&dq, &dk, &dv}) {
    copy_columns_(dqkv, col, *t, 0, t->dim(1));
    col += t->dim(1);
  }
}

}  // namespace lowrank::cuda
