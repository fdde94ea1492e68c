// Causal (optionally sliding-window) attention with grouped-query heads on the CPU.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/attention_kernels.h"
#include "backend/cpu/attention_row.h"
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

// Per (sequence, head): the head's keys transposed once ([hd, T], keys contiguous), then the query
// rows four at a time (attention_kernels.h): their dot products with every key they may see, the
// sums of attention_row (the decode path's) exactly, at several times its speed. Each row's
// softmax and weighted values then follow as there (softmax_values).
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
  const int64_t group = H / KV, ldq = H * hd, ldk = KV * hd;
  const int64_t work = B * H * T * T * hd;  // small problems (decode, tests) skip the thread wake-up
  // Per thread: the head's keys transposed and four rows' scores; allocated here, not by the worker
  // threads (memory a worker frees stays in its own malloc arena).
  const int64_t per_thread = hd * T + kRowsAtOnce * T;
  std::vector<float> scratch(static_cast<size_t>(per_thread * omp_get_max_threads())), zeros(hd, 0.0f);
#pragma omp parallel if (work > 65536)
  {
    float* kt = scratch.data() + per_thread * omp_get_thread_num();
    float* S = kt + hd * T;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / group;
        const float* kb = kp + b * T * ldk + kvh * hd;  // key j: kb + j * ldk
        const float* vb = vp + b * T * ldk + kvh * hd;
        transpose_rows(kb, ldk, T, hd, kt);
        for (int64_t i0 = 0; i0 < T; i0 += kRowsAtOnce) {
          const int64_t n = std::min(kRowsAtOnce, T - i0), last = i0 + n - 1;
          const int64_t lo = s.window > 0 ? std::max<int64_t>(0, i0 - s.window + 1) : 0;  // the first row's first key
          const float* rows[kRowsAtOnce];  // rows past T read zeros; their sums are not used
          for (int64_t r = 0; r < kRowsAtOnce; ++r) rows[r] = r < n ? qp + (b * T + i0 + r) * ldq + h * hd : zeros.data();
          float* const dots[kRowsAtOnce] = {S, S + T, S + 2 * T, S + 3 * T};
          dot_rows_with_keys(kt, T, rows, hd, dots, lo, last);
          for (int64_t r = 0; r < n; ++r) {  // a row sees keys j0..i (computed beyond: ignored)
            const int64_t i = i0 + r, j0 = s.window > 0 ? std::max<int64_t>(0, i - s.window + 1) : 0;
            lp[(b * H + h) * T + i] = softmax_values(
                S + r * T, hd, j0, i, s, [&](int64_t j) { return vb + j * ldk; }, op + (b * T + i) * ldq + h * hd);
          }
        }
      }
  }
  if (lse_out) *lse_out = lse;
  return out;
}

}  // namespace lowrank::cpu
