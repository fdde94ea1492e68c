// Causal (optionally sliding-window) attention with grouped-query heads on the CPU: blocks of
// query rows through BLAS (attention_block.h).
#include <cmath>
#include <vector>

#include "backend/cpu/attention_block.h"
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse_out) {
  const int64_t B = s.batch, T = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  LR_CHECK(q.dim(0) == B * T && q.dim(1) == H * hd && k.dim(1) == KV * hd && v.dim(1) == KV * hd && H % KV == 0,
           "attention shapes ", q.str(), " ", k.str(), " ", v.str());
  Tensor out = Tensor::empty({B * T, H * hd});
  Tensor lse = Tensor::empty({B, H, T});
  const float *qp = q.f32(), *kp = k.f32(), *vp = v.f32();
  float *op = out.f32(), *lp = lse.f32();
  const int64_t group = H / KV, ldq = H * hd, ldk = KV * hd;
  std::vector<float> S(static_cast<size_t>(std::min(AttentionBlock::kRows, T) * T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i0 = 0; i0 < T; i0 += AttentionBlock::kRows) {
        const AttentionBlock blk = AttentionBlock::at(i0, T, s);
        const float* kb = kp + (b * T + blk.k0) * ldk + kvh * hd;
        attention_scores(qp + (b * T + i0) * ldq + h * hd, ldq, kb, ldk, hd, blk, s, S.data());
        // Softmax of each row in place (keys it may not see: exp(-inf) = 0); its log-sum-exp saved.
#pragma omp parallel for if (blk.n * blk.nk > 16384)
        for (int64_t r = 0; r < blk.n; ++r) {
          float* row = S.data() + r * blk.nk;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t c = 0; c < blk.nk; ++c) mx = std::max(mx, row[c]);
          double sum = 0;
          for (int64_t c = 0; c < blk.nk; ++c) {
            row[c] = std::exp(row[c] - mx);
            sum += row[c];
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t c = 0; c < blk.nk; ++c) row[c] *= inv;
          lp[(b * H + h) * T + i0 + r] = mx + static_cast<float>(std::log(sum));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(blk.n), static_cast<int>(hd),
                    static_cast<int>(blk.nk), 1.0f, S.data(), static_cast<int>(blk.nk),
                    vp + (b * T + blk.k0) * ldk + kvh * hd, static_cast<int>(ldk), 0.0f,
                    op + (b * T + i0) * ldq + h * hd, static_cast<int>(ldq));
      }
    }
  if (lse_out) *lse_out = lse;
  return out;
}

}  // namespace lowrank::cpu
