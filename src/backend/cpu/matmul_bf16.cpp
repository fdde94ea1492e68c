// The bf16-weight matrix product of the CPU (matmul_bf16.h). Few rows (decode): one pass over the
// weight, each row's dot products in 16 lanes summed in a fixed order (the same on every clone of
// target_clones.h: this file compiles without contraction). More rows (prefill): blocks of the
// weight widened to f32 and multiplied by OpenBLAS.
#include "backend/cpu/matmul_bf16.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/target_clones.h"
#include "lowrank/core/dtype.h"

namespace lowrank::cpu {
namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kFewRows = 4;      // up to this many rows: one pass over the weight
constexpr int64_t kBlockFloats = int64_t{4} << 20;  // 16 MiB of the weight widened at a time for sgemm

// Pairwise over the lanes, then the tail: one order for every clone and every grouping of rows.
inline float reduce(float* acc, float tail) {
  for (int64_t half = kLanes / 2; half > 0; half /= 2)
    for (int64_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  return acc[0] + tail;
}

// out[r] = Σ_k w_r[k] · x[k] for kRows rows of the weight at once: several streams in flight (a
// row at a time left the loads waiting) and x read once for all of them.
constexpr int64_t kRows = 4;
LOWRANK_CPU_CLONES void dot_rows_bf16(const uint16_t* w, int64_t rows, const float* x, int64_t K, float* out) {
  float acc[kRows][kLanes] = {};
  float tail[kRows] = {};
  int64_t k = 0;
  if (rows == kRows) {
    for (; k + kLanes <= K; k += kLanes)
      for (int64_t r = 0; r < kRows; ++r)
        for (int64_t j = 0; j < kLanes; ++j) acc[r][j] += bf16_to_f32(w[r * K + k + j]) * x[k + j];
  } else {
    for (; k + kLanes <= K; k += kLanes)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < kLanes; ++j) acc[r][j] += bf16_to_f32(w[r * K + k + j]) * x[k + j];
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = k; t < K; ++t) tail[r] += bf16_to_f32(w[r * K + t]) * x[t];
    out[r] = reduce(acc[r], tail[r]);
  }
}

LOWRANK_CPU_CLONES void widen_rows(const uint16_t* w, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(w[i]);
}

}  // namespace

void matmul_nt_bf16(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(0);
  const auto* wp = static_cast<const uint16_t*>(w.raw());
  const float* xp = x.f32();
  float* yp = y.f32();
  if (M <= kFewRows) {
    const int64_t groups = (N + kRows - 1) / kRows;
#pragma omp parallel for schedule(static) if (N * K > (1 << 15))
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t n0 = g * kRows, rows = std::min(kRows, N - n0);
      for (int64_t i = 0; i < M; ++i) {
        float d[kRows];
        dot_rows_bf16(wp + n0 * K, rows, xp + i * K, K, d);
        for (int64_t r = 0; r < rows; ++r) {
          float& out = yp[i * N + n0 + r];
          out = beta == 0.0f ? alpha * d[r] : alpha * d[r] + beta * out;
        }
      }
    }
    return;
  }
  // Blocks as large as fit in 16 MiB: sgemm packs x again for every block (a whole projection of a
  // small model at once; 256-row blocks cost a 91M model's prefill a third of its speed).
  const int64_t block_rows = std::max<int64_t>(64, std::min<int64_t>(N, kBlockFloats / std::max<int64_t>(K, 1)));
  std::vector<float> block(static_cast<size_t>(block_rows * K));
  for (int64_t n0 = 0; n0 < N; n0 += block_rows) {
    const int64_t rows = std::min(block_rows, N - n0);
    const int64_t elems = rows * K;
#pragma omp parallel for schedule(static) if (elems > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) widen_rows(wp + (n0 + r) * K, block.data() + r * K, K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, rows, K, alpha, xp, K, block.data(), K, beta, yp + n0, N);
  }
}

}  // namespace lowrank::cpu
