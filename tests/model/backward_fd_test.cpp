// Finite-difference checks of every backward op: for a random scalar loss L = Σ g ⊙ op(x),
// the analytic gradient must match (L(x + h e_i) - L(x - h e_i)) / 2h, computed in double.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "lowrank/core/rng.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;

namespace {

Tensor randn(Rng& rng, const Shape& s, float scale = 1.0f) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.normal() * scale;
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * b.f32()[i];
  return s;
}

// Checks d/dx of Σ g ⊙ f(x) against `analytic` at a sample of coordinates.
void check(const std::string& what, Tensor x, const Tensor& g, const std::function<Tensor(const Tensor&)>& f,
           const Tensor& analytic, float h = 1e-2f, double tol = 2e-2) {
  ASSERT_EQ(analytic.numel(), x.numel()) << what;
  double max_grad = 0;
  for (int64_t i = 0; i < analytic.numel(); ++i) max_grad = std::max(max_grad, std::fabs((double)analytic.f32()[i]));
  const int64_t stride = std::max<int64_t>(1, x.numel() / 40);
  for (int64_t i = 0; i < x.numel(); i += stride) {
    const float orig = x.f32()[i];
    x.f32()[i] = orig + h;
    const double up = dot(f(x), g);
    x.f32()[i] = orig - h;
    const double down = dot(f(x), g);
    x.f32()[i] = orig;
    const double fd = (up - down) / (2 * h);
    EXPECT_NEAR(analytic.f32()[i], fd, tol * std::max(1.0, max_grad)) << what << " element " << i;
  }
}

TEST(BackwardFiniteDifference, RmsNormInputAndWeight) {
  Rng rng(1);
  Tensor x = randn(rng, {5, 12}), w = randn(rng, {12}), g = randn(rng, {5, 12});
  Tensor rstd;
  ops::rmsnorm(x, w, 1e-5f, &rstd);
  Tensor dw = Tensor::zeros({12});
  Tensor dx = ops::rmsnorm_backward(g, x, w, rstd, &dw);
  check("rmsnorm dx", x.clone(), g, [&](const Tensor& v) { return ops::rmsnorm(v, w, 1e-5f); }, dx);
  check("rmsnorm dw", w.clone(), g, [&](const Tensor& v) { return ops::rmsnorm(x, v, 1e-5f); }, dw);
}

TEST(BackwardFiniteDifference, LayerNormInputWeightBias) {
  Rng rng(2);
  Tensor x = randn(rng, {4, 10}), w = randn(rng, {10}), b = randn(rng, {10}), g = randn(rng, {4, 10});
  Tensor mean, rstd;
  ops::layernorm(x, w, b, 1e-5f, &mean, &rstd);
  Tensor dw = Tensor::zeros({10}), db = Tensor::zeros({10});
  Tensor dx = ops::layernorm_backward(g, x, w, mean, rstd, &dw, &db);
  check("layernorm dx", x.clone(), g, [&](const Tensor& v) { return ops::layernorm(v, w, b, 1e-5f); }, dx);
  check("layernorm dw", w.clone(), g, [&](const Tensor& v) { return ops::layernorm(x, v, b, 1e-5f); }, dw);
  check("layernorm db", b.clone(), g, [&](const Tensor& v) { return ops::layernorm(x, w, v, 1e-5f); }, db);
}

TEST(BackwardFiniteDifference, Activations) {
  Rng rng(3);
  Tensor x = randn(rng, {3, 9}, 2.0f), g = randn(rng, {3, 9});
  for (ops::Act a : {ops::Act::SiLU, ops::Act::GeluTanh, ops::Act::GeluErf}) {
    Tensor dx = ops::activation_backward(g, x, a);
    check("activation", x.clone(), g, [&](const Tensor& v) { return ops::activation(v, a); }, dx, 1e-3f);
  }
  Tensor u = randn(rng, {3, 9}), dg, du;
  ops::swiglu_backward(g, x, u, dg, du);
  check("swiglu dg", x.clone(), g, [&](const Tensor& v) { return ops::swiglu(v, u); }, dg, 1e-3f);
  check("swiglu du", u.clone(), g, [&](const Tensor& v) { return ops::swiglu(x, v); }, du, 1e-3f);
}

TEST(BackwardFiniteDifference, RopeInverseIsTheGradient) {
  Rng rng(4);
  const int64_t n = 6, heads = 2, hd = 8;
  for (int64_t rotary : {hd, hd / 2}) {  // full and partial rotary (the last dims of each head pass through)
    Tensor cos = Tensor::empty({n, rotary / 2}), sin = Tensor::empty({n, rotary / 2});
    for (int64_t i = 0; i < cos.numel(); ++i) {
      const float a = rng.uniform(0, 6.28f);
      cos.f32()[i] = std::cos(a);
      sin.f32()[i] = std::sin(a);
    }
    std::vector<int32_t> pos{0, 1, 2, 3, 4, 5};
    Tensor x = randn(rng, {n, heads * hd}), g = randn(rng, {n, heads * hd});
    Tensor dx = g.clone();
    ops::rope_(dx, heads, pos, cos, sin, /*inverse=*/true);
    auto f = [&](const Tensor& v) { Tensor y = v.clone(); ops::rope_(y, heads, pos, cos, sin); return y; };
    check("rope rotary " + std::to_string(rotary), x.clone(), g, f, dx);
    if (rotary < hd) {  // the pass-through dims are untouched
      Tensor y = f(x);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = t * heads * hd + rotary; i < t * heads * hd + hd; ++i) EXPECT_EQ(y.f32()[i], x.f32()[i]);
    }
  }
}

TEST(BackwardFiniteDifference, LogitSoftCapping) {
  Rng rng(7);
  Tensor x = randn(rng, {4, 9}, 20.0f), g = randn(rng, {4, 9});
  const float cap = 15.0f;
  auto f = [&](const Tensor& v) { Tensor y = v.clone(); ops::softcap_(y, cap); return y; };
  Tensor dx = g.clone();
  ops::softcap_backward_(dx, f(x), cap);
  check("softcap", x.clone(), g, f, dx);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_LT(std::fabs(f(x).f32()[i]), cap);
}

TEST(BackwardFiniteDifference, AttentionWithGqaWindowAndSoftCapping) {
  Rng rng(5);
  for (int64_t window : {0, 3})
  for (float softcap : {0.0f, 1.5f}) {  // 1.5: most scores are capped hard
    ops::AttentionShape s{2, 7, 4, 2, 4, window, 0.5f, softcap};
    Tensor q = randn(rng, {14, 16}), k = randn(rng, {14, 8}), v = randn(rng, {14, 8}), g = randn(rng, {14, 16});
    Tensor lse;
    Tensor out = ops::attention(q, k, v, s, &lse);
    Tensor dq, dk, dv;
    ops::attention_backward(g, q, k, v, out, lse, s, dq, dk, dv);
    check("attention dq", q.clone(), g, [&](const Tensor& t) { return ops::attention(t, k, v, s); }, dq);
    check("attention dk", k.clone(), g, [&](const Tensor& t) { return ops::attention(q, t, v, s); }, dk);
    check("attention dv", v.clone(), g, [&](const Tensor& t) { return ops::attention(q, k, t, s); }, dv);
  }
}

TEST(BackwardFiniteDifference, CrossEntropyAndEmbedding) {
  Rng rng(6);
  Tensor logits = randn(rng, {5, 11});
  std::vector<int32_t> targets{3, -100, 0, 10, 7};
  Tensor d = Tensor::zeros({5, 11});
  ops::cross_entropy_backward(logits, targets, 0.5f, d);
  Tensor one = Tensor::full({1}, 1.0f);
  check("cross entropy", logits.clone(), one, [&](const Tensor& l) {
    return Tensor::full({1}, static_cast<float>(0.5 * ops::cross_entropy_sum(l, targets, nullptr)));
  }, d, 1e-2f);
  Tensor table = randn(rng, {6, 4}), g = randn(rng, {5, 4});
  std::vector<int32_t> ids{1, 4, 1, 0, 5};
  Tensor dt = Tensor::zeros({6, 4});
  ops::embedding_backward_(dt, ids, g);
  check("embedding", table.clone(), g, [&](const Tensor& t) { return ops::embedding(t, ids); }, dt);
}

}  // namespace
