// RMSNorm / LayerNorm CUDA kernels against the CPU, forward (with saved statistics) and backward
// (dx and the accumulated weight / bias gradients).
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {
// Rows x d. The register fast path takes d % 8 == 0 (bf16) / d % 4 == 0 (f32) up to 1024 threads x 2
// packs; the others (100 in bf16, 4097, 16384 in f32) run the general kernels.
const std::pair<int64_t, int64_t> kShapes[] = {{1, 8},    {37, 100},   {300, 1000}, {5, 4097},
                                               {2000, 64}, {600, 4096}, {3, 16384}};
}

TEST(CudaNorm, RmsNormForwardAndBackward) {
  LR_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType t : float_types())
    for (DType wt : float_types())
      for (auto [rows, d] : kShapes) {
        SCOPED_TRACE(testing::Message() << name(t) << " w " << name(wt) << " " << rows << "x" << d);
        Tensor x = random_cpu({rows, d}, seed++, 3.0f), w = random_cpu({d}, seed++), dy = random_cpu({rows, d}, seed++);
        Tensor dw0 = random_cpu({d}, seed++);
        Tensor xr = rounded(x, t), wr = rounded(w, wt), dyr = rounded(dy, t);
        Tensor rstd_ref, rstd;
        Tensor ref = cpu::rmsnorm(xr, wr, 1e-6f, &rstd_ref);
        Tensor got = ops::rmsnorm(to_gpu(x, t), to_gpu(w, wt), 1e-6f, &rstd);
        EXPECT_EQ(got.dtype(), t);
        EXPECT_LE(rel_err(got, ref), tol_for(t));
        EXPECT_LE(rel_err(rstd, rstd_ref), kTolF32);
        Tensor dw_ref = dw0.clone(), dw = dw0.to(gpu());
        Tensor dx_ref = cpu::rmsnorm_backward(dyr, xr, wr, rstd_ref, &dw_ref);
        Tensor dx = ops::rmsnorm_backward(to_gpu(dy, t), to_gpu(x, t), to_gpu(w, wt), rstd, &dw);
        EXPECT_LE(rel_err(dx, dx_ref), tol_for(t));
        EXPECT_LE(rel_err(dw, dw_ref), 1e-4);  // f32 sums over many rows, in another order
        Tensor none;
        Tensor dx2 = ops::rmsnorm_backward(to_gpu(dy, t), to_gpu(x, t), to_gpu(w, wt), rstd, &none);
        EXPECT_LE(rel_err(dx2, dx_ref), tol_for(t));
      }
}

// The residual gradient read from, and dx written into, the first d columns of wider matrices
// (o's and down's output side of LoRA's K-extension): the dense op's values, the other columns
// untouched; both the register path (d % 8 == 0, 16-byte rows) and the general kernel (d = 100,
// or a row stride that breaks 16-byte alignment).
TEST(CudaNorm, RmsNormBackwardFromAndIntoWiderGradients) {
  LR_REQUIRE_GPU();
  uint64_t seed = 50;
  for (auto [rows, d, extra] : {std::tuple<int64_t, int64_t, int64_t>{37, 64, 16}, {300, 1000, 24}, {5, 100, 8},
                                {40, 64, 3}}) {
    SCOPED_TRACE(testing::Message() << rows << "x" << d << " + " << extra);
    const DType t = DType::BF16;
    Tensor x = random_cpu({rows, d}, seed++, 3.0f), w = random_cpu({d}, seed++), dy = random_cpu({rows, d}, seed++);
    Tensor res = random_cpu({rows, d}, seed++);
    Tensor wide_res = random_cpu({rows, d + extra}, seed++);
    ops::copy_columns_(wide_res, 0, res, 0, d);
    Tensor rstd;
    ops::rmsnorm(to_gpu(x, t), to_gpu(w, t), 1e-6f, &rstd);
    const Tensor gx = to_gpu(x, t), gw = to_gpu(w, t), gdy = to_gpu(dy, t), gres = to_gpu(res, t);
    const Tensor dense = ops::rmsnorm_backward(gdy, gx, gw, rstd, nullptr, &gres).to(Device::cpu()).to(DType::F32);
    const Tensor fill = Tensor::full({rows, d + extra}, 7.0f);
    Tensor into = to_gpu(fill, t);
    const Tensor gwide_res = to_gpu(wide_res, t);
    const Tensor got = ops::rmsnorm_backward(gdy, gx, gw, rstd, nullptr, &gwide_res, &into);
    EXPECT_EQ(got.raw(), into.raw());
    const Tensor h = into.to(Device::cpu()).to(DType::F32);
    // The same kernel as the dense call where the rows stay 16-byte aligned: bit for bit; the
    // general kernel otherwise (its row sums in another order).
    const bool same_kernel = extra % 8 == 0;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < d + extra; ++j) {
        const float v = h.f32()[i * (d + extra) + j];
        if (j >= d) ASSERT_EQ(v, 7.0f) << i << ", " << j;
        else if (same_kernel) ASSERT_EQ(v, dense.f32()[i * d + j]) << i << ", " << j;
        else ASSERT_NEAR(v, dense.f32()[i * d + j], 2e-2 * std::max(1.0f, std::abs(dense.f32()[i * d + j])));
      }
    // An `into` narrower than a row, or of other rows, is refused.
    Tensor narrow = Tensor::empty({rows, d - 1}, t, gpu()), short_rows = Tensor::empty({rows + 1, d + 8}, t, gpu());
    EXPECT_ANY_THROW(ops::rmsnorm_backward(gdy, gx, gw, rstd, nullptr, &gres, &narrow));
    EXPECT_ANY_THROW(ops::rmsnorm_backward(gdy, gx, gw, rstd, nullptr, &gres, &short_rows));
  }
}

TEST(CudaNorm, LayerNormForwardAndBackward) {
  LR_REQUIRE_GPU();
  uint64_t seed = 100;
  for (DType t : float_types())
    for (bool bias : {true, false})
      for (auto [rows, d] : kShapes) {
        SCOPED_TRACE(testing::Message() << name(t) << " bias " << bias << " " << rows << "x" << d);
        Tensor x = random_cpu({rows, d}, seed++, 3.0f), w = random_cpu({d}, seed++), b = random_cpu({d}, seed++);
        Tensor dy = random_cpu({rows, d}, seed++);
        // Offset the rows so that the mean matters.
        for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] += 1.5f;
        Tensor xr = rounded(x, t), wr = rounded(w, t), br = bias ? rounded(b, t) : Tensor(), dyr = rounded(dy, t);
        Tensor mean_ref, rstd_ref, mean, rstd;
        Tensor ref = cpu::layernorm(xr, wr, br, 1e-5f, &mean_ref, &rstd_ref);
        Tensor got = ops::layernorm(to_gpu(x, t), to_gpu(w, t), bias ? to_gpu(b, t) : Tensor(), 1e-5f, &mean, &rstd);
        EXPECT_LE(rel_err(got, ref), tol_for(t));
        EXPECT_LE(rel_err(mean, mean_ref), kTolF32);
        EXPECT_LE(rel_err(rstd, rstd_ref), kTolF32);
        Tensor dw_ref = Tensor::zeros({d}), db_ref = Tensor::zeros({d});
        Tensor dw = Tensor::zeros({d}, DType::F32, gpu()), db = Tensor::zeros({d}, DType::F32, gpu());
        Tensor dx_ref = cpu::layernorm_backward(dyr, xr, wr, mean_ref, rstd_ref, &dw_ref, &db_ref);
        Tensor dx = ops::layernorm_backward(to_gpu(dy, t), to_gpu(x, t), to_gpu(w, t), mean, rstd, &dw, &db);
        EXPECT_LE(rel_err(dx, dx_ref), tol_for(t));
        EXPECT_LE(rel_err(dw, dw_ref), 1e-4);
        EXPECT_LE(rel_err(db, db_ref), 1e-4);
      }
}
TEST(CudaNorm, RmsNormOverHeadsOfAWiderTensor) {
  LR_REQUIRE_GPU();
  // Qwen3's QK-norm: q [n, heads * hd] normalised per head with a weight [hd].
  for (DType t : float_types()) {
    const int64_t n = 19, heads = 6, hd = 64;
    Tensor x = random_cpu({n, heads * hd}, 1, 3.0f), w = random_cpu({hd}, 2), dy = random_cpu({n, heads * hd}, 3);
    Tensor rstd_ref, rstd;
    Tensor ref = cpu::rmsnorm(rounded(x, t), rounded(w, t), 1e-6f, &rstd_ref);
    Tensor got = ops::rmsnorm(to_gpu(x, t), to_gpu(w, t), 1e-6f, &rstd);
    EXPECT_EQ(got.shape(), x.shape());
    EXPECT_LE(rel_err(got, ref), tol_for(t));
    EXPECT_LE(rel_err(rstd, rstd_ref), kTolF32);
    Tensor dw_ref = Tensor::zeros({hd}), dw = Tensor::zeros({hd}, DType::F32, gpu());
    Tensor dx_ref = cpu::rmsnorm_backward(rounded(dy, t), rounded(x, t), rounded(w, t), rstd_ref, &dw_ref);
    Tensor dx = ops::rmsnorm_backward(to_gpu(dy, t), to_gpu(x, t), to_gpu(w, t), rstd, &dw);
    EXPECT_LE(rel_err(dx, dx_ref), tol_for(t));
    EXPECT_LE(rel_err(dw, dw_ref), 1e-4);
  }
}
#endif
