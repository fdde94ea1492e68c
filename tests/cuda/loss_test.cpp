// Cross-entropy on the GPU: the vector-target ops and the fused chunk op (in place or not), with
// ignored rows and a vocabulary that is no multiple of the block size.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {
std::vector<int32_t> targets_for(int n, int V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = i % 5 == 2 ? -100 : static_cast<int32_t>(rng.below(V));
  return t;
}
Tensor i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}
double f64(const Tensor& t) { return t.to(Device::cpu()).data<double>()[0]; }
}  // namespace

TEST(CudaLoss, CrossEntropySumAndBackward) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (auto [n, V] : {std::pair{1, 7}, std::pair{33, 1000}, std::pair{8, 50257}}) {
      SCOPED_TRACE(testing::Message() << name(t) << " " << n << "x" << V);
      Tensor logits = random_cpu({n, V}, n + V, 8.0f);
      const auto tg = targets_for(n, V, 3);
      Tensor lr = rounded(logits, t);
      int64_t count_ref = 0, count = 0;
      const double ref = cpu::cross_entropy_sum(lr, tg, &count_ref);
      const double got = ops::cross_entropy_sum(to_gpu(logits, t), tg, &count);
      EXPECT_EQ(count, count_ref);
      EXPECT_NEAR(got, ref, 1e-5 * std::abs(ref) + 1e-5);
      // Backward adds into an existing gradient.
      Tensor d0 = random_cpu({n, V}, 5, 1e-3f);
      Tensor dref = d0.clone();
      const double lref = cpu::cross_entropy_backward(lr, tg, 0.25f, dref);
      Tensor d = to_gpu(d0, DType::F32);
      const double l = ops::cross_entropy_backward(to_gpu(logits, t), tg, 0.25f, d);
      EXPECT_NEAR(l, lref, 1e-5 * std::abs(lref) + 1e-5);
      EXPECT_LE(rel_err(d, dref), kTolF32 * 10);  // f32 exp vs the CPU's double exp
    }
}

TEST(CudaLoss, CrossEntropyChunkInPlaceAndSeparate) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (auto [n, V] : {std::pair{17, 3001}, std::pair{64, 32000}}) {
      SCOPED_TRACE(testing::Message() << name(t) << " " << n << "x" << V);
      Tensor logits = random_cpu({n, V}, n * V, 6.0f);
      const auto tg = targets_for(n, V, 9);
      Tensor lr = rounded(logits, t);
      Tensor dref, sum_ref = Tensor::zeros({1}, DType::F64);
      sum_ref.data<double>()[0] = 1.5;
      cpu::cross_entropy_chunk(lr, i32(tg), 0.5f, dref, sum_ref);
      // Separate output.
      Tensor acc = Tensor::zeros({1}, DType::F64);
      acc.data<double>()[0] = 1.5;
      Tensor acc_d = acc.to(gpu()), tgd = i32(tg).to(gpu());
      Tensor ld = to_gpu(logits, t), dl;
      ops::cross_entropy_chunk(ld, tgd, 0.5f, dl, acc_d);
      EXPECT_EQ(dl.dtype(), t);
      EXPECT_LE(rel_err(dl, dref), tol_for(t) * (t == DType::F32 ? 10 : 1));
      EXPECT_NEAR(f64(acc_d), sum_ref.data<double>()[0], 1e-5 * sum_ref.data<double>()[0]);
      // In place: the logits buffer becomes the gradient.
      Tensor acc2 = acc.to(gpu());
      ops::cross_entropy_chunk(ld, tgd, 0.5f, ld, acc2);
      EXPECT_LE(rel_err(ld, dref), tol_for(t) * (t == DType::F32 ? 10 : 1));
      EXPECT_NEAR(f64(acc2), sum_ref.data<double>()[0], 1e-5 * sum_ref.data<double>()[0]);
    }
}
#endif
