// cuBLASLt GEMMs against the CPU's OpenBLAS GEMMs: three layouts, f32 and bf16, alpha/beta,
// mixed bf16 x f32 (LoRA), shapes that are no multiple of any tile, views at odd offsets.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {

enum class L { NT, NN, TN };

void run(L l, const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta, bool cpu) {
  switch (l) {
    case L::NT: cpu ? cpu::matmul_nt(x, w, y, alpha, beta) : ops::matmul_nt(x, w, y, alpha, beta); break;
    case L::NN: cpu ? cpu::matmul_nn(x, w, y, alpha, beta) : ops::matmul_nn(x, w, y, alpha, beta); break;
    case L::TN: cpu ? cpu::matmul_tn(x, w, y, alpha, beta) : ops::matmul_tn(x, w, y, alpha, beta); break;
  }
}

// x and w shapes for an [M, N] result with inner size K.
Shape x_shape(L l, int64_t M, int64_t K) { return l == L::TN ? Shape{K, M} : Shape{M, K}; }
Shape w_shape(L l, int64_t K, int64_t N) { return l == L::NT ? Shape{N, K} : Shape{K, N}; }

struct Case {
  L layout;
  int64_t M, K, N;
  DType xt, wt, yt;
  float alpha, beta;
};

void check(const Case& c, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "layout " << int(c.layout) << " M=" << c.M << " K=" << c.K << " N=" << c.N
                                  << " x " << name(c.xt) << " w " << name(c.wt) << " y " << name(c.yt)
                                  << " alpha " << c.alpha << " beta " << c.beta);
  // bf16 compute when any input is bf16 (the f32 operand is rounded too) or when y is bf16.
  const bool bf16_compute = c.xt == DType::BF16 || c.wt == DType::BF16 || c.yt == DType::BF16;
  const DType compute = bf16_compute ? DType::BF16 : DType::F32;
  Tensor x = random_cpu(x_shape(c.layout, c.M, c.K), seed), w = random_cpu(w_shape(c.layout, c.K, c.N), seed + 1);
  Tensor y0 = random_cpu({c.M, c.N}, seed + 2);
  Tensor xr = rounded(rounded(x, c.xt), compute), wr = rounded(rounded(w, c.wt), compute);
  Tensor ref = rounded(y0, c.yt).clone();
  run(c.layout, xr, wr, ref, c.alpha, c.beta, true);

  Tensor xd = to_gpu(x, c.xt), wd = to_gpu(w, c.wt);
  Tensor yd = c.beta != 0.0f ? to_gpu(y0, c.yt) : Tensor::empty({c.M, c.N}, c.yt, gpu());  // NaN-poisoned
  run(c.layout, xd, wd, yd, c.alpha, c.beta, false);
  EXPECT_EQ(yd.dtype(), c.yt);
  EXPECT_LE(rel_err(yd, ref), tol_for(compute));
}

}  // namespace

TEST(CudaGemm, LayoutsDtypesAndScalars) {
  LR_REQUIRE_GPU();
  uint64_t seed = 100;
  for (L l : {L::NT, L::NN, L::TN})
    for (DType t : float_types())
      for (auto [M, K, N] : {std::tuple{37, 129, 65}, std::tuple{1, 7, 3}, std::tuple{256, 512, 384},
                             std::tuple{1000, 33, 17}}) {
        check({l, M, K, N, t, t, t, 1.0f, 0.0f}, seed++);
        check({l, M, K, N, t, t, t, 0.5f, 1.0f}, seed++);   // accumulate into y (LoRA's expand)
        check({l, M, K, N, t, t, t, -2.0f, 0.25f}, seed++);
      }
}

// Column blocks of wider matrices (LoRA's shared-input groups: h and g are [N, Σr], each layer
// reads or writes its [N, r] block), bf16 in, bf16 or f32 out, against the CPU's blocks.
TEST(CudaGemm, ColumnBlocks) {
  LR_REQUIRE_GPU();
  const int64_t n = 300, in = 96, out = 80, wide = 48, r = 16;
  uint64_t seed = 900;
  for (int64_t col : {int64_t{0}, int64_t{16}, int64_t{32}})
    for (DType yt : {DType::BF16, DType::F32}) {
      SCOPED_TRACE(testing::Message() << "col " << col << " y " << name(yt));
      Tensor h = rounded(random_cpu({n, wide}, seed++), DType::BF16), b = rounded(random_cpu({out, r}, seed++), DType::BF16);
      Tensor dy = rounded(random_cpu({n, out}, seed++), DType::BF16), y0 = rounded(random_cpu({n, out}, seed++), yt);
      // expand: y += 0.5 · h_block Bᵀ
      Tensor ref = y0.clone(), yd = to_gpu(y0, yt);
      cpu::matmul_blocks(ops::Gemm::NT, {h, col, r}, ops::ColumnBlock::all(b), ops::ColumnBlock::all(ref), 0.5f, 1.0f);
      ops::matmul_blocks(ops::Gemm::NT, {to_gpu(h, DType::BF16), col, r}, ops::ColumnBlock::all(to_gpu(b, DType::BF16)),
                         ops::ColumnBlock::all(yd), 0.5f, 1.0f);
      EXPECT_LE(rel_err(yd, ref), tol_for(DType::BF16));
      // dB = dyᵀ h_block   [out, r]
      Tensor db_ref = Tensor::zeros({out, r}), db = Tensor::zeros({out, r}, yt, gpu());
      cpu::matmul_blocks(ops::Gemm::TN, ops::ColumnBlock::all(dy), {h, col, r}, ops::ColumnBlock::all(db_ref), 1.0f, 0.0f);
      ops::matmul_blocks(ops::Gemm::TN, ops::ColumnBlock::all(to_gpu(dy, DType::BF16)), {to_gpu(h, DType::BF16), col, r},
                         ops::ColumnBlock::all(db), 1.0f, 0.0f);
      EXPECT_LE(rel_err(db, db_ref), tol_for(DType::BF16));
      // g block = dy B into [n, wide]: the other columns stay as they were.
      Tensor g0 = rounded(random_cpu({n, wide}, seed++), yt), g_ref = g0.clone(), gd = to_gpu(g0, yt);
      cpu::matmul_blocks(ops::Gemm::NN, ops::ColumnBlock::all(dy), ops::ColumnBlock::all(b), {g_ref, col, r}, 2.0f, 0.0f);
      ops::matmul_blocks(ops::Gemm::NN, ops::ColumnBlock::all(to_gpu(dy, DType::BF16)),
                         ops::ColumnBlock::all(to_gpu(b, DType::BF16)), {gd, col, r}, 2.0f, 0.0f);
      EXPECT_LE(rel_err(gd, g_ref), tol_for(DType::BF16));
    }
}

TEST(CudaGemm, MixedDtypesForLora) {
  LR_REQUIRE_GPU();
  uint64_t seed = 500;
  // bf16 activations x f32 A/B, output bf16 (forward) or f32 (grads of the f32 masters).
  for (L l : {L::NT, L::NN, L::TN}) {
    check({l, 77, 96, 8, DType::BF16, DType::F32, DType::BF16, 1.0f, 0.0f}, seed++);
    check({l, 77, 8, 96, DType::BF16, DType::F32, DType::BF16, 2.0f, 1.0f}, seed++);
    check({l, 77, 96, 8, DType::F32, DType::BF16, DType::F32, 1.0f, 0.0f}, seed++);
    check({l, 77, 96, 8, DType::BF16, DType::BF16, DType::F32, 0.5f, 1.0f}, seed++);
    check({l, 50, 64, 40, DType::F32, DType::F32, DType::BF16, 1.0f, 0.0f}, seed++);
  }
}

TEST(CudaGemm, DefaultOutputDtypeAndEmptyInner) {
  LR_REQUIRE_GPU();
  Tensor x = to_gpu(random_cpu({5, 6}, 1), DType::BF16), w = to_gpu(random_cpu({4, 6}, 2), DType::F32);
  Tensor y;
  ops::matmul_nt(x, w, y);
  EXPECT_EQ(y.dtype(), DType::BF16);
  EXPECT_EQ(y.shape(), (Shape{5, 4}));
  Tensor xf = to_gpu(random_cpu({5, 6}, 1), DType::F32), wf = to_gpu(random_cpu({4, 6}, 2), DType::F32);
  Tensor yf;
  ops::matmul_nt(xf, wf, yf);
  EXPECT_EQ(yf.dtype(), DType::F32);
  // K = 0: y = beta * y.
  Tensor a = Tensor::empty({0, 3}, DType::F32, gpu()), b = Tensor::empty({0, 4}, DType::F32, gpu());
  Tensor c;
  ops::matmul_tn(a, b, c);
  Tensor ch = to_host(c);
  for (int64_t i = 0; i < ch.numel(); ++i) EXPECT_EQ(ch.f32()[i], 0.0f);
  Tensor y0 = to_gpu(Tensor::full({3, 4}, 2.0f), DType::F32);
  ops::matmul_tn(a, b, y0, 1.0f, 0.5f);
  Tensor yh = to_host(y0);
  for (int64_t i = 0; i < yh.numel(); ++i) EXPECT_EQ(yh.f32()[i], 1.0f);
}

TEST(CudaGemm, ViewsAtOddOffsets) {
  LR_REQUIRE_GPU();
  // Row slices start at 2-byte aligned addresses: the heuristic must pick an algorithm for them.
  for (DType t : float_types()) {
    Tensor x = random_cpu({41, 33}, 7), w = random_cpu({19, 33}, 8);
    Tensor xd = to_gpu(x, t).slice_rows(3, 40), wd = to_gpu(w, t).slice_rows(1, 18);
    Tensor yd;
    ops::matmul_nt(xd, wd, yd);
    Tensor ref;
    cpu::matmul_nt(rounded(x, t).slice_rows(3, 40), rounded(w, t).slice_rows(1, 18), ref);
    EXPECT_LE(rel_err(yd, ref), tol_for(t)) << name(t);
  }
}

TEST(CudaGemm, LinearWithBias) {
  LR_REQUIRE_GPU();
  for (DType t : float_types()) {
    Tensor x = random_cpu({30, 20}, 11), w = random_cpu({10, 20}, 12), b = random_cpu({10}, 13);
    Tensor ref = cpu::linear(rounded(x, t), rounded(w, t), rounded(b, t));
    Tensor got = ops::linear(to_gpu(x, t), to_gpu(w, t), to_gpu(b, t));
    EXPECT_LE(rel_err(got, ref), tol_for(t)) << name(t);
  }
}
#endif
