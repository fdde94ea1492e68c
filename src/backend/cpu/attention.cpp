// Causal (optionally sliding-window) attention with grouped-query heads on the CPU.
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/attention_row.h"
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse_out) {
  const int64_t B = s.batch, T = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim;
  LR_CHECK(q.dim(0) == B * T && q.dim(1) == H * hd && k.dim(1) == KV * hd && v.dim(1) == KV * hd && H % KV == 0,
           "attention shapes ", q.str(), " ", k.str(), " ", v.str());
  Tensor out = Tensor::empty({B * T, H * hd});
  Tensor lse = Tensor::empty({B, H, T});
  const float* qp = q.f32();
  const float* kp = k.f32();
  const float* vp = v.f32();
  float* op = out.f32();
  float* lp = lse.f32();
  const int64_t group = H / KV;
  const int64_t work = B * H * T * T * hd;  // small problems (decode, tests) skip the thread wake-up
#pragma omp parallel if (work > 65536)
  {
    std::vector<float> p(T);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / group;
        for (int64_t i = 0; i < T; ++i) {
          const float* qi = qp + (b * T + i) * H * hd + h * hd;
          const int64_t j0 = s.window > 0 ? std::max<int64_t>(0, i - s.window + 1) : 0;
          lp[(b * H + h) * T + i] = attention_row(
              qi, hd, j0, i, s, [&](int64_t j) { return kp + (b * T + j) * KV * hd + kvh * hd; },
              [&](int64_t j) { return vp + (b * T + j) * KV * hd + kvh * hd; }, p, op + (b * T + i) * H * hd + h * hd);
        }
      }
  }
  if (lse_out) *lse_out = lse;
  return out;
}

}  // namespace lowrank::cpu
