// CPU GEMMs through OpenBLAS (f32). Every matrix product of the model goes through here.
#include <cblas.h>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_bf16.h"

namespace lowrank::cpu {
namespace {
void check_cpu_f32(const Tensor& t, const char* what) {
  LR_CHECK(t.defined() && t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2, what, " ",
           t.defined() ? t.str() : "undefined");
}
void prepare_out(Tensor& y, int64_t m, int64_t n, float beta) {
  if (beta == 0.0f && (!y.defined() || y.dim(0) != m || y.dim(1) != n)) y = Tensor::empty({m, n});
  LR_CHECK(y.dim(0) == m && y.dim(1) == n, "output ", y.str(), " for [", m, ", ", n, "]");
}
}  // namespace

void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  check_cpu_f32(x, "x");
  const bool bf16_weight = w.defined() && w.dtype() == DType::BF16 && w.device().is_cpu() && w.rank() == 2;
  if (!bf16_weight) check_cpu_f32(w, "w");
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(0);
  LR_CHECK(w.dim(1) == K, x.str(), " · ", w.str(), "ᵀ");
  prepare_out(y, M, N, beta);
  if (M == 0 || N == 0) return;
  if (bf16_weight) return matmul_nt_bf16(x, w, y, alpha, beta);  // a KeepBf16 projection
  if (M <= 4) {
    // A few rows (decode steps): sgemm would first copy all of w into its packed layout, three
    // passes over the weights where a matrix-vector product per row makes one each (one row:
    // 2.3x the decode speed; sgemm wins from about 6 rows, bench/RESULTS.md 2026-12-05).
    for (int64_t i = 0; i < M; ++i)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, w.f32(), K, x.f32() + i * K, 1, beta, y.f32() + i * N, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, alpha, x.f32(), K, w.f32(), K, beta, y.f32(), N);
}

void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  check_cpu_f32(x, "x");
  check_cpu_f32(w, "w");
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(1);
  LR_CHECK(w.dim(0) == K, x.str(), " · ", w.str());
  prepare_out(y, M, N, beta);
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, x.f32(), K, w.f32(), N, beta, y.f32(), N);
}

void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  check_cpu_f32(x, "x");
  check_cpu_f32(w, "w");
  const int64_t K = x.dim(0), M = x.dim(1), N = w.dim(1);
  LR_CHECK(w.dim(0) == K, x.str(), "ᵀ · ", w.str());
  prepare_out(y, M, N, beta);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f) y.zero_();
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, alpha, x.f32(), M, w.f32(), N, beta, y.f32(), N);
}

void matmul_blocks(ops::Gemm layout, const ops::ColumnBlock& x, const ops::ColumnBlock& w,
                   const ops::ColumnBlock& y, float alpha, float beta) {
  for (const ops::ColumnBlock* b : {&x, &w, &y}) check_cpu_f32(b->t, "matmul_blocks operand");
  const ops::GemmDims d = ops::gemm_dims(layout, x, w, y);
  if (d.m == 0 || d.n == 0) return;
  const CBLAS_TRANSPOSE tx = layout == ops::Gemm::TN ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tw = layout == ops::Gemm::NT ? CblasTrans : CblasNoTrans;
  cblas_sgemm(CblasRowMajor, tx, tw, d.m, d.n, d.k, alpha, x.t.f32() + x.col, x.t.dim(1), w.t.f32() + w.col,
              w.t.dim(1), beta, y.t.f32() + y.col, y.t.dim(1));
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor y;
  matmul_nt(x, w, y);
  if (b.defined()) add_bias_(y, b);
  return y;
}

Tensor matmul_nt_add(const Tensor& x, const Tensor& w, const Tensor& c, float alpha) {
  check_cpu_f32(c, "c");
  Tensor y = c.clone();
  matmul_nt(x, w, y, alpha, 1.0f);
  return y;
}

}  // namespace lowrank::cpu
