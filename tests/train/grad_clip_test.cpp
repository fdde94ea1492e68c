#include "lowrank/train/grad_clip.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "io/io_test_helpers.h"

using namespace lowrank;
using namespace lowrank::train;
using lowrank::io::testing::expect_error;

namespace {

std::vector<ParamRef> two_grads(std::vector<float> a, std::vector<float> b) {
  const auto na = static_cast<int64_t>(a.size()), nb = static_cast<int64_t>(b.size());
  return {{"a", Tensor::zeros({na}), Tensor::from_vector(a, {na})},
          {"b", Tensor::zeros({nb}), Tensor::from_vector(b, {nb})}};
}

}  // namespace

TEST(ClipGrad, GlobalNormSpansAllTensors) {
  auto params = two_grads({3.0f, 0.0f}, {0.0f, 4.0f, 12.0f});
  EXPECT_DOUBLE_EQ(global_grad_norm(params), 13.0);
  EXPECT_DOUBLE_EQ(global_grad_norm({}), 0.0);
}

TEST(ClipGrad, BelowThresholdLeavesGradsUntouched) {
  auto params = two_grads({3.0f, 0.0f}, {0.0f, 4.0f});
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 10.0), 5.0);
  EXPECT_EQ(params[0].grad.f32()[0], 3.0f);
  EXPECT_EQ(params[1].grad.f32()[1], 4.0f);
  // At the threshold, coef = 5 / (5 + 1e-6) < 1: torch scales by a hair, and so do we.
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 5.0), 5.0);
  EXPECT_NEAR(params[0].grad.f32()[0], 3.0f, 1e-6);
}

TEST(ClipGrad, AboveThresholdScalesEveryGradByOneFactor) {
  auto params = two_grads({3.0f, 0.0f}, {0.0f, -4.0f});
  const double total = clip_grad_norm(params, 1.0);
  EXPECT_DOUBLE_EQ(total, 5.0);  // the norm before clipping, as torch returns it
  const float coef = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_EQ(params[0].grad.f32()[0], 3.0f * coef);
  EXPECT_EQ(params[1].grad.f32()[1], -4.0f * coef);
  EXPECT_NEAR(global_grad_norm(params), 1.0, 1e-6);
}

TEST(ClipGrad, LargeTensorNormIsAccurateAndReproducible) {
  const int64_t n = 1'000'003;  // many blocks, odd tail
  std::vector<float> g(n);
  double want = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    g[i] = std::sin(0.01f * static_cast<float>(i)) * 1e-3f;
    want += static_cast<double>(g[i]) * g[i];
  }
  std::vector<ParamRef> params = {{"big", Tensor::zeros({n}), Tensor::from_vector(g, {n})}};
  const double norm = global_grad_norm(params);
  EXPECT_NEAR(norm, std::sqrt(want), 1e-12 * std::sqrt(want));
  EXPECT_EQ(norm, global_grad_norm(params));  // fixed summation order
}

TEST(ClipGrad, AllFiniteDetectsNanAndInf) {
  auto ok = two_grads({1.0f, -2.0f}, {std::numeric_limits<float>::max()});
  EXPECT_TRUE(all_finite(ok));
  EXPECT_TRUE(std::isfinite(global_grad_norm(ok)));  // max float squared fits a double
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto params = two_grads({1.0f, 2.0f}, {3.0f, bad});
    EXPECT_FALSE(all_finite(params)) << bad;
    EXPECT_FALSE(std::isfinite(global_grad_norm(params))) << bad;
    // Clipping a non-finite gradient leaves it alone (the caller skips the step).
    EXPECT_FALSE(std::isfinite(clip_grad_norm(params, 1.0)));
    EXPECT_EQ(params[0].grad.f32()[1], 2.0f);
  }
  const int64_t n = 100000;
  std::vector<float> big(n, 0.5f);
  big[n - 7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<ParamRef> params = {{"big", Tensor::zeros({n}), Tensor::from_vector(big, {n})}};
  EXPECT_FALSE(all_finite(params));
}

TEST(ClipGrad, RejectsBadMaxNormAndUndefinedGrads) {
  auto params = two_grads({1.0f}, {1.0f});
  expect_error([&] { clip_grad_norm(params, 0.0); }, "max_grad_norm", {"positive"});
  expect_error([&] { clip_grad_norm(params, -1.0); }, "max_grad_norm", {"-1"});
  expect_error([&] { clip_grad_norm(params, std::nan("")); }, "max_grad_norm", {"positive"});
  params[1].grad = Tensor();
  expect_error([&] { global_grad_norm(params); }, "gradient of parameter 'b'", {"undefined"});
}
