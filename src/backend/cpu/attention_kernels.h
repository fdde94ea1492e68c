#pragma once
// The inner loops of the CPU attention forward (attention.cpp) and backward
// (attention_backward.cpp), written so that they vectorise: query rows are taken four at a time,
// each key (or value) column of the head is loaded once for the four, and every dot product still
// adds its head_dim products in order, so the forward's sums equal attention_row's (the decode
// path's) bit for bit and the backward recomputes exactly the forward's scores; e^x is
// exp_approx (no libm call, so those loops vectorise too). Compiled for AVX-512 and AVX2 as well
// as the baseline, picked at run time; -ffp-contract=off (CMakeLists.txt) keeps every clone's
// rounding the baseline's.
#include <algorithm>
#include <cstdint>

#include "backend/cpu/exp_approx.h"
#include "backend/cpu/target_clones.h"

namespace lowrank::cpu {

constexpr int64_t kRowsAtOnce = 4;

// s_r[j] += q_r · col[j] for the four rows r and j in [lo, hi]; col: one of head_dim's columns of
// the keys (or values), keys contiguous ([hd, T] transposed rows).
LOWRANK_CPU_CLONES inline void add_key_column(const float* __restrict col, const float (&q)[kRowsAtOnce],
                                              float* __restrict s0, float* __restrict s1,
                                              float* __restrict s2, float* __restrict s3, int64_t lo,
                                              int64_t hi) {
  const float q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3];
  for (int64_t j = lo; j <= hi; ++j) {
    const float k = col[j];
    s0[j] += q0 * k;
    s1[j] += q1 * k;
    s2[j] += q2 * k;
    s3[j] += q3 * k;
  }
}

constexpr int64_t kKeysAtOnce = 16;  // one AVX-512 register of f32 sums per row

// out_r[j .. j + 15] for the four rows: the sums stay in registers across head_dim (4 × 16 of them)
// instead of going through memory at every d; each still adds its products in d's order.
LOWRANK_CPU_CLONES inline void dot_rows_with_key_block(const float* __restrict cols, int64_t T,
                                                       const float* const (&rows)[kRowsAtOnce], int64_t hd,
                                                       float* const (&out)[kRowsAtOnce], int64_t j) {
  float a0[kKeysAtOnce] = {}, a1[kKeysAtOnce] = {}, a2[kKeysAtOnce] = {}, a3[kKeysAtOnce] = {};
  for (int64_t d = 0; d < hd; ++d) {
    const float* __restrict k = cols + d * T + j;
    const float q0 = rows[0][d], q1 = rows[1][d], q2 = rows[2][d], q3 = rows[3][d];
    for (int64_t l = 0; l < kKeysAtOnce; ++l) {
      a0[l] += q0 * k[l];
      a1[l] += q1 * k[l];
      a2[l] += q2 * k[l];
      a3[l] += q3 * k[l];
    }
  }
  for (int64_t l = 0; l < kKeysAtOnce; ++l) {
    out[0][j + l] = a0[l];
    out[1][j + l] = a1[l];
    out[2][j + l] = a2[l];
    out[3][j + l] = a3[l];
  }
}

// out_r[j] = Σ_d rows_r[d] · cols[d·T + j] for the four rows r and j in [lo, hi]: the rows' dot
// products with keys (or values) transposed to [hd, T], each summed in d's order.
inline void dot_rows_with_keys(const float* cols, int64_t T, const float* const (&rows)[kRowsAtOnce], int64_t hd,
                               float* const (&out)[kRowsAtOnce], int64_t lo, int64_t hi) {
  int64_t j = lo;
  for (; j + kKeysAtOnce - 1 <= hi; j += kKeysAtOnce) dot_rows_with_key_block(cols, T, rows, hd, out, j);
  if (j > hi) return;
  for (float* o : out) std::fill(o + j, o + hi + 1, 0.0f);
  for (int64_t d = 0; d < hd; ++d) {
    const float rd[kRowsAtOnce] = {rows[0][d], rows[1][d], rows[2][d], rows[3][d]};
    add_key_column(cols + d * T, rd, out[0], out[1], out[2], out[3], j, hi);
  }
}

// out[d] += w0·x0[d] + w1·x1[d] + w2·x2[d] + w3·x3[d] for d < n.
LOWRANK_CPU_CLONES inline void add_rows(float* __restrict out, const float* __restrict x0,
                                        const float* __restrict x1, const float* __restrict x2,
                                        const float* __restrict x3, const float (&w)[kRowsAtOnce], int64_t n) {
  const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t d = 0; d < n; ++d) out[d] += w0 * x0[d] + w1 * x1[d] + w2 * x2[d] + w3 * x3[d];
}

// out[d] += Σ_r w[r]·x[r][d] over eight rows, for d < n (the attention backward's dK and dV rows:
// eight query rows per pass over them instead of four halves their loads and stores).
LOWRANK_CPU_CLONES inline void add_rows8(float* __restrict out, const float* const (&x)[2 * kRowsAtOnce],
                                         const float (&w)[2 * kRowsAtOnce], int64_t n) {
  const float *__restrict x0 = x[0], *__restrict x1 = x[1], *__restrict x2 = x[2], *__restrict x3 = x[3];
  const float *__restrict x4 = x[4], *__restrict x5 = x[5], *__restrict x6 = x[6], *__restrict x7 = x[7];
  for (int64_t d = 0; d < n; ++d)
    out[d] += w[0] * x0[d] + w[1] * x1[d] + w[2] * x2[d] + w[3] * x3[d] + w[4] * x4[d] + w[5] * x5[d] +
              w[6] * x6[d] + w[7] * x7[d];
}

// p[j] = e^(p[j] − shift) for j in [lo, hi].
LOWRANK_CPU_CLONES inline void exp_shifted_(float* __restrict p, int64_t lo, int64_t hi, float shift) {
  for (int64_t j = lo; j <= hi; ++j) p[j] = exp_approx(p[j] - shift);
}

// The backward's weights of one row without soft-capping: P[j] = e^(scale·dot[j] − lse), and
// dS[j] = P[j]·(dS[j] − di)·scale (dS holding dO·v_j on entry), for j in [lo, hi].
LOWRANK_CPU_CLONES inline void row_weights_(float* __restrict P, float* __restrict dS, int64_t lo, int64_t hi,
                                            float scale, float lse, float di) {
  for (int64_t j = lo; j <= hi; ++j) {
    const float p = exp_approx(P[j] * scale - lse);
    P[j] = p;
    dS[j] = p * (dS[j] - di) * scale;
  }
}

// t [hd, T] = rows [T, hd] with row stride ld: head_dim's columns made contiguous.
inline void transpose_rows(const float* rows, int64_t ld, int64_t T, int64_t hd, float* t) {
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < hd; ++d) t[d * T + j] = rows[j * ld + d];
}

}  // namespace lowrank::cpu
