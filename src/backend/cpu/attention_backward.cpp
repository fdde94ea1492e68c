// The backward of causal (optionally sliding-window) attention with grouped-query heads on the
// CPU, flash-attention style: of the forward it reads only the output and each row's log-sum-exp.
// Parallel over (sequence, kv head): a task owns its kv head's dk/dv rows and its heads' dq rows,
// so no two threads add into one row. Within a task, query rows four at a time
// (attention_kernels.h): their scores again (the forward's sums exactly) and dP = dO·Vᵀ the same
// way; per row P = exp(score − lse) and dS = P ⊙ (dP − D) · d score/d dot, D = dO·O; then
// dQ += dS·K (four keys at a time), dK += dSᵀ·Q and dV += Pᵀ·dO (eight rows at a time) along head_dim.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/attention_kernels.h"
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int64_t B = s.batch, T = s.seq, H = s.heads, KV = s.kv_heads, hd = s.head_dim, group = H / KV;
  dq = Tensor::zeros(q.shape());
  dk = Tensor::zeros(k.shape());
  dv = Tensor::zeros(v.shape());
  const float *dop = dout.f32(), *qp = q.f32(), *kp = k.f32(), *vp = v.f32(), *op = out.f32(), *lp = lse.f32();
  float *dqp = dq.f32(), *dkp = dk.f32(), *dvp = dv.f32();
  const int64_t ldq = H * hd, ldk = KV * hd;
  const int64_t work = B * H * T * T * hd;  // small problems (tests) skip the thread wake-up
  // Per thread: the kv head's keys and values transposed ([hd, T]), and for eight query rows their
  // scores (then P) and dP (then dS) against every key, indexed by key. Allocated here, not by the
  // worker threads (memory a worker frees stays in its own malloc arena).
  constexpr int64_t kRows = 2 * kRowsAtOnce;  // query rows per pass over dK and dV: two blocks of four
  const int64_t per_thread = 2 * hd * T + 2 * kRows * T;
  std::vector<float> scratch(static_cast<size_t>(per_thread * omp_get_max_threads())), zeros(hd, 0.0f);
#pragma omp parallel if (work > 65536)
  {
    float* kt = scratch.data() + per_thread * omp_get_thread_num();
    float *vt = kt + hd * T, *P = vt + hd * T, *dS = P + kRows * T;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t kvh = 0; kvh < KV; ++kvh) {
        const float* kb = kp + b * T * ldk + kvh * hd;  // key j: kb + j * ldk
        const float* vb = vp + b * T * ldk + kvh * hd;
        float* dkb = dkp + b * T * ldk + kvh * hd;
        float* dvb = dvp + b * T * ldk + kvh * hd;
        transpose_rows(kb, ldk, T, hd, kt);
        transpose_rows(vb, ldk, T, hd, vt);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
          for (int64_t i8 = 0; i8 < T; i8 += kRows) {
            // Keys the eight rows see between them: lo8..last8. Each block of four fills its rows of
            // P and dS over that range (zeros where its rows see nothing).
            const int64_t last8 = std::min(T, i8 + kRows) - 1;
            const int64_t lo8 = s.window > 0 ? std::max<int64_t>(0, i8 - s.window + 1) : 0;
            const float *qr8[kRows], *dor8[kRows];  // rows past T read zeros
            for (int64_t half = 0; half < 2; ++half) {
              const int64_t i0 = i8 + half * kRowsAtOnce;
              float *Pr[kRowsAtOnce], *dSr[kRowsAtOnce];  // this block's rows of P and dS
              const float *qr[kRowsAtOnce], *dor[kRowsAtOnce];
              for (int64_t r = 0; r < kRowsAtOnce; ++r) {
                Pr[r] = P + (half * kRowsAtOnce + r) * T;
                dSr[r] = dS + (half * kRowsAtOnce + r) * T;
                const int64_t row = (b * T + i0 + r) * ldq + h * hd;
                qr[r] = i0 + r < T ? qp + row : zeros.data();
                dor[r] = i0 + r < T ? dop + row : zeros.data();
                qr8[half * kRowsAtOnce + r] = qr[r];
                dor8[half * kRowsAtOnce + r] = dor[r];
              }
              if (i0 >= T) {  // the second block past the end
                for (int64_t r = 0; r < kRowsAtOnce; ++r) {
                  std::fill(Pr[r] + lo8, Pr[r] + last8 + 1, 0.0f);
                  std::fill(dSr[r] + lo8, dSr[r] + last8 + 1, 0.0f);
                }
                continue;
              }
              const int64_t n = std::min(kRowsAtOnce, T - i0), last = i0 + n - 1;
              const int64_t lo = s.window > 0 ? std::max<int64_t>(0, i0 - s.window + 1) : 0;
              dot_rows_with_keys(kt, T, qr, hd, Pr, lo, last);   // q·k, then P
              dot_rows_with_keys(vt, T, dor, hd, dSr, lo, last);  // dO·v, then dS
              for (int64_t r = 0; r < kRowsAtOnce; ++r) {
                const int64_t i = i0 + r;
                // Keys the row sees: j0..i; the rest of lo8..last8 (and rows past T) weigh nothing.
                const int64_t j0 = r < n ? (s.window > 0 ? std::max<int64_t>(0, i - s.window + 1) : 0) : last + 1;
                const int64_t j1 = r < n ? i : last;
                std::fill(Pr[r] + lo8, Pr[r] + std::max(lo8, j0), 0.0f);
                std::fill(dSr[r] + lo8, dSr[r] + std::max(lo8, j0), 0.0f);
                std::fill(Pr[r] + j1 + 1, Pr[r] + last8 + 1, 0.0f);
                std::fill(dSr[r] + j1 + 1, dSr[r] + last8 + 1, 0.0f);
                if (r >= n) continue;
                const int64_t row = (b * T + i) * ldq + h * hd;
                const float lse_i = lp[(b * H + h) * T + i];
                double di = 0;  // D_i = dO_i · O_i
                for (int64_t e = 0; e < hd; ++e) di += static_cast<double>(dop[row + e]) * op[row + e];
                if (s.softcap > 0) {
                  for (int64_t j = j0; j <= j1; ++j) {
                    const float score = ops::attention_score(Pr[r][j], s.scale, s.softcap);
                    const float p = exp_approx(score - lse_i);
                    const float th = score / s.softcap;  // d score / d dot: scale · (1 - tanh²)
                    Pr[r][j] = p;
                    dSr[r][j] = p * (dSr[r][j] - static_cast<float>(di)) * (s.scale * (1.0f - th * th));
                  }
                } else {
                  row_weights_(Pr[r], dSr[r], j0, j1, s.scale, lse_i, static_cast<float>(di));
                }
                // dQ_i += Σ_j dS_ij k_j, four keys at a time
                float* dqi = dqp + row;
                int64_t j = j0;
                for (; j + kRowsAtOnce <= j1 + 1; j += kRowsAtOnce) {
                  const float w[kRowsAtOnce] = {dSr[r][j], dSr[r][j + 1], dSr[r][j + 2], dSr[r][j + 3]};
                  add_rows(dqi, kb + j * ldk, kb + (j + 1) * ldk, kb + (j + 2) * ldk, kb + (j + 3) * ldk, w, hd);
                }
                for (; j <= j1; ++j)
                  for (int64_t d = 0; d < hd; ++d) dqi[d] += dSr[r][j] * kb[j * ldk + d];
              }
            }
            // dK_j += Σ_r dS_rj q_r and dV_j += Σ_r P_rj dO_r over the eight rows
            for (int64_t j = lo8; j <= last8; ++j) {
              float ws[kRows], wp[kRows];
              for (int64_t r = 0; r < kRows; ++r) ws[r] = dS[r * T + j], wp[r] = P[r * T + j];
              add_rows8(dkb + j * ldk, qr8, ws, hd);
              add_rows8(dvb + j * ldk, dor8, wp, hd);
            }
          }
      }
  }
}

}  // namespace lowrank::cpu
