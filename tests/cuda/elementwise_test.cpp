// Element-wise CUDA ops against the CPU ops where the op table (tests/ops/op_table_test.cpp) does
// not reach: mixed dtypes, exact round-to-nearest-even casts, long column sums.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cstring>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

TEST(CudaElementwise, AddScaledAndBiasWithMixedDtypes) {
  LR_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType yt : float_types())
    for (DType xt : float_types()) {
      SCOPED_TRACE(testing::Message() << "y " << name(yt) << " x " << name(xt));
      for (int64_t cols : {77, 80}) {
      Tensor y = random_cpu({33, cols}, seed++), x = random_cpu({33, cols}, seed++), b = random_cpu({cols}, seed++);
      Tensor ref = rounded(y, yt).clone();
      cpu::add_scaled_(ref, rounded(x, xt), -0.75f);
      cpu::add_bias_(ref, rounded(b, xt));
      cpu::add_(ref, rounded(x, xt));
      Tensor yd = to_gpu(y, yt);
      ops::add_scaled_(yd, to_gpu(x, xt), -0.75f);
      ops::add_bias_(yd, to_gpu(b, xt));
      ops::add_(yd, to_gpu(x, xt));
      EXPECT_LE(rel_err(yd, ref), tol_for(yt == DType::BF16 || xt == DType::BF16 ? DType::BF16 : DType::F32));
      }
    }
}

TEST(CudaElementwise, CastsAreExactRoundToNearestEven) {
  LR_REQUIRE_GPU();
  Tensor x = random_cpu({1001}, 5, 100.0f);
  for (DType to : {DType::BF16, DType::F16}) {
    Tensor ref = x.to(to);                            // CPU rounding
    Tensor got = ops::cast(x.to(gpu()), to).to(Device::cpu());
    EXPECT_EQ(std::memcmp(got.raw(), ref.raw(), ref.nbytes()), 0) << dtype_name(to);
    Tensor back = ops::cast(got.to(gpu()), DType::F32).to(Device::cpu());
    Tensor back_ref = ref.to(DType::F32);
    EXPECT_EQ(std::memcmp(back.raw(), back_ref.raw(), back_ref.nbytes()), 0) << dtype_name(to);
  }
  Tensor same = x.to(gpu());
  EXPECT_EQ(ops::cast(same, DType::F32).raw(), same.raw());  // no copy when the dtype matches
}

TEST(CudaElementwise, BiasGradIsAColumnSum) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (auto [n, m] : {std::pair{1, 5}, std::pair{333, 70}, std::pair{20000, 65}}) {
      Tensor dy = random_cpu({n, m}, n + m), db0 = random_cpu({m}, 3);
      Tensor ref = db0.clone();
      cpu::bias_grad_(ref, rounded(dy, t));
      Tensor db = db0.to(gpu());
      ops::bias_grad_(db, to_gpu(dy, t));
      EXPECT_LE(rel_err(db, ref), kTolF32) << name(t) << " " << n << "x" << m;
    }
}
#endif

#ifdef LOWRANK_WITH_CUDA
TEST(CudaElementwise, MulAndCopyColumns) {
  LR_REQUIRE_GPU();
  uint64_t seed = 40;
  for (DType yt : float_types())
    for (DType xt : float_types()) {
      for (Shape shape : {Shape{37, 65}, Shape{32, 64}}) {
      Tensor y = random_cpu(shape, seed++), x = random_cpu(shape, seed++);
      Tensor ref = rounded(y, yt).clone();
      cpu::mul_(ref, rounded(x, xt));
      Tensor yd = to_gpu(y, yt);
      ops::mul_(yd, to_gpu(x, xt));
      EXPECT_LE(rel_err(yd, ref), tol_for(yt == DType::BF16 || xt == DType::BF16 ? DType::BF16 : DType::F32));
      }
    }
  for (DType t : float_types()) {
    const int64_t n = 33, d = 40;
    Tensor qkv = random_cpu({n, 3 * d + 1}, seed++), dst0 = random_cpu({n, 2 * d + 3}, seed++);
    Tensor ref = rounded(dst0, t).clone();
    cpu::copy_columns_(ref, 3, rounded(qkv, t), d + 1, 2 * d);
    Tensor dst = to_gpu(dst0, t);
    ops::copy_columns_(dst, 3, to_gpu(qkv, t), d + 1, 2 * d);
    EXPECT_EQ(rel_err(dst, ref), 0.0) << name(t);
  }
}

#endif
