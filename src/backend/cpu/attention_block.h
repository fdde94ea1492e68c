#pragma once
// The backward of causal (optionally sliding-window) attention on the CPU by blocks of query rows,
// as BLAS GEMMs: the scores of a block against every key it may see are one GEMM, the softmax is
// recomputed row by row, and the gradients are GEMMs again. A block holds kRows query rows of one
// head, so the scratch is kRows × T floats. (The forward does not use BLAS: as blocks of GEMMs it
// measured no faster on the 120M shape, its GEMMs being small; attention.cpp vectorises its dot
// products across keys instead. Here 256 and 512 rows a block measured slower than 128 on the 7M
// shape: the GEMMs then also cover the masked half.)
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowrank/ops/op_types.h"

namespace lowrank::cpu {

struct AttentionBlock {
  static constexpr int64_t kRows = 128;
  int64_t i0 = 0, n = 0;   // query rows i0 .. i0 + n - 1 (positions within the sequence)
  int64_t k0 = 0, nk = 0;  // keys k0 .. k0 + nk - 1: every key one of the rows sees

  // The block of rows from i0 (at most kRows, up to T).
  static AttentionBlock at(int64_t i0, int64_t T, const ops::AttentionShape& s) {
    AttentionBlock b;
    b.i0 = i0;
    b.n = std::min(kRows, T - i0);
    b.k0 = s.window > 0 ? std::max<int64_t>(0, i0 - s.window + 1) : 0;
    b.nk = i0 + b.n - b.k0;
    return b;
  }
  // The first key row r of the block sees (the last is i0 + r).
  int64_t first_key(int64_t r, const ops::AttentionShape& s) const {
    return s.window > 0 ? std::max<int64_t>(0, i0 + r - s.window + 1) : 0;
  }
};

// S [n, nk] = the scores of the block's query rows q (row stride ldq) against keys k (key k0's row,
// row stride ldk): q·k scaled, then soft-capped (ops::attention_score); keys a row may not see are
// -inf.
inline void attention_scores(const float* q, int64_t ldq, const float* k, int64_t ldk, int64_t hd,
                             const AttentionBlock& b, const ops::AttentionShape& s, float* S) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b.n), static_cast<int>(b.nk),
              static_cast<int>(hd), s.scale, q, static_cast<int>(ldq), k, static_cast<int>(ldk), 0.0f, S,
              static_cast<int>(b.nk));
  const float inf = std::numeric_limits<float>::infinity();
#pragma omp parallel for if (b.n * b.nk > 16384)
  for (int64_t r = 0; r < b.n; ++r) {
    float* row = S + r * b.nk;
    const int64_t lo = b.first_key(r, s) - b.k0, hi = b.i0 + r - b.k0;  // visible: lo..hi
    for (int64_t c = 0; c < b.nk; ++c) {
      if (c < lo || c > hi) row[c] = -inf;
      else if (s.softcap > 0) row[c] = s.softcap * std::tanh(row[c] / s.softcap);
    }
  }
}

}  // namespace lowrank::cpu
