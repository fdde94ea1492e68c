#include "lowrank/train/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "io/io_test_helpers.h"
#include "lowrank/io/safetensors.h"

using namespace lowrank;
using namespace lowrank::train;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::ScratchDir;

namespace {

// AdamW as written in torch.optim.AdamW's documentation, in double precision: the reference the
// f32 implementation must match to ~1e-6 relative.
struct RefAdamW {
  AdamWConfig cfg;
  std::vector<double> p, m, v;
  int64_t t = 0;
  RefAdamW(AdamWConfig c, std::vector<double> init)
      : cfg(c), p(std::move(init)), m(p.size(), 0.0), v(p.size(), 0.0) {}
  void step(const std::vector<double>& g, double lr, bool decay = true) {
    ++t;
    const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(t));
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] *= 1.0 - lr * cfg.weight_decay;
      m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
      v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
      const double denom = std::sqrt(v[i]) / std::sqrt(bc2) + cfg.eps;
      p[i] -= lr / bc1 * m[i] / denom;
    }
  }
};

std::vector<double> to_double(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[static_cast<size_t>(i)] = t.f32()[i];
  return out;
}

Tensor from_double(const std::vector<double>& v, const Shape& shape) {
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from_vector(f, shape);
}

void expect_close(const Tensor& got, const std::vector<double>& want, double rel,
                  const std::string& what) {
  ASSERT_EQ(static_cast<size_t>(got.numel()), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got.f32()[i], want[i], rel * std::max(std::abs(want[i]), 1e-30))
        << what << "[" << i << "]";
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Three steps of gradients for a [2, 3] tensor: mixed signs and magnitudes.
const std::vector<std::vector<double>> kGrads = {
    {0.5, -1.25, 0.03125, 2.0, -0.75, 0.1},
    {-0.25, -1.0, 0.5, 1.5, 0.25, -0.2},
    {0.125, 0.75, -0.0625, -2.5, 1.0, 0.3},
};
const std::vector<double> kInit = {0.5, -1.5, 2.0, -0.25, 1.0, -0.75};
const std::vector<double> kLrs = {1e-2, 5e-3, 2.5e-2};

}  // namespace

TEST(AdamW, MatchesDoubleReferenceWithWeightDecayAndBiasCorrection) {
  AdamWConfig cfg;
  cfg.lr = 1e-2;
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.99;  // larger bias correction effects than 0.999 over 3 steps
  AdamW opt(cfg);
  RefAdamW ref(cfg, kInit);
  RefAdamW ref_nodecay(cfg, kInit);

  std::vector<ParamRef> params(2);
  params[0] = {"w", from_double(kInit, {2, 3}), Tensor::zeros({2, 3}), true};
  params[1] = {"b", from_double(kInit, {2, 3}), Tensor::zeros({2, 3}), false};
  for (size_t s = 0; s < kGrads.size(); ++s) {
    for (auto& p : params)
      std::memcpy(p.grad.f32(), from_double(kGrads[s], {2, 3}).f32(), 6 * sizeof(float));
    opt.step(params, kLrs[s]);
    ref.step(kGrads[s], kLrs[s], true);
    ref_nodecay.step(kGrads[s], kLrs[s], false);
    EXPECT_EQ(opt.steps(), static_cast<int64_t>(s + 1));
    expect_close(params[0].param, ref.p, 1e-6, "w after step " + std::to_string(s + 1));
    expect_close(params[1].param, ref_nodecay.p, 1e-6, "b after step " + std::to_string(s + 1));
  }
  // The moments too, via the checkpoint view.
  std::map<std::string, Tensor> state;
  for (auto& [name, t] : opt.state_tensors()) state[name] = t;
  ASSERT_EQ(state.size(), 4u);
  expect_close(state.at("w.exp_avg"), ref.m, 1e-6, "w.exp_avg");
  expect_close(state.at("w.exp_avg_sq"), ref.v, 1e-6, "w.exp_avg_sq");
  // Weight decay made a difference that the comparison above would have caught.
  EXPECT_GT(std::abs(ref.p[0] - ref_nodecay.p[0]), 1e-5);
}

TEST(AdamW, FirstStepMovesEachElementByLrTimesSignOfGrad) {
  // With bias correction, m_hat / sqrt(v_hat) = g / |g| on step 1: the step is lr per element.
  // Without it the step would be (1 - b1) / sqrt(1 - b2) ~ 3.16 times larger.
  AdamW opt(AdamWConfig{});
  std::vector<ParamRef> params = {
      {"p", Tensor::from_vector({1, 1, 1}, {3}), Tensor::from_vector({0.001f, -3.0f, 40.0f}, {3})}};
  opt.step(params, 0.1);
  EXPECT_NEAR(params[0].param.f32()[0], 0.9, 1e-6);
  EXPECT_NEAR(params[0].param.f32()[1], 1.1, 1e-6);
  EXPECT_NEAR(params[0].param.f32()[2], 0.9, 1e-6);
}

TEST(AdamW, WeightDecayIsDecoupledAndSkippedForNoDecayParams) {
  AdamWConfig cfg;
  cfg.weight_decay = 0.5;
  AdamW opt(cfg);
  // Zero gradient: the Adam term is 0 / (0 + eps) = 0, so only the decay acts.
  std::vector<ParamRef> params = {
      {"decayed", Tensor::from_vector({2.0f, -4.0f}, {2}), Tensor::zeros({2}), true},
      {"kept", Tensor::from_vector({2.0f, -4.0f}, {2}), Tensor::zeros({2}), false}};
  opt.step(params, 0.1);
  EXPECT_FLOAT_EQ(params[0].param.f32()[0], 2.0f * 0.95f);
  EXPECT_FLOAT_EQ(params[0].param.f32()[1], -4.0f * 0.95f);
  EXPECT_EQ(params[1].param.f32()[0], 2.0f);
  EXPECT_EQ(params[1].param.f32()[1], -4.0f);
}

TEST(AdamW, ZeroLrStillAdvancesStateButNotParams) {
  // transformers' warmup gives lr 0 for the first step; torch still counts it.
  AdamW opt(AdamWConfig{});
  std::vector<ParamRef> params = {
      {"p", Tensor::from_vector({1, 2}, {2}), Tensor::from_vector({0.5f, -0.5f}, {2})}};
  opt.step(params, 0.0);
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_EQ(params[0].param.f32()[0], 1.0f);
  EXPECT_EQ(params[0].param.f32()[1], 2.0f);
  EXPECT_FLOAT_EQ(opt.state_tensors()[0].second.f32()[0], 0.05f);  // exp_avg = 0.1 * g
}

TEST(AdamW, LargeTensorTakesParallelPathWithSameResult) {
  const int64_t n = 100000;  // above the OpenMP threshold
  std::vector<float> init(n), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    init[i] = std::sin(0.001f * static_cast<float>(i));
    grad[i] = std::cos(0.003f * static_cast<float>(i));
  }
  AdamWConfig cfg;
  cfg.weight_decay = 0.01;
  AdamW big(cfg);
  std::vector<ParamRef> a = {{"p", Tensor::from_vector(init, {n}), Tensor::from_vector(grad, {n})}};
  big.step(a, 1e-3);
  big.step(a, 1e-3);
  // The same elements in chunks small enough for the serial path.
  for (int64_t i = 0; i < n; i += 1000) {
    AdamW one(cfg);
    std::vector<float> pi(init.begin() + i, init.begin() + i + 1000);
    std::vector<float> gi(grad.begin() + i, grad.begin() + i + 1000);
    std::vector<ParamRef> b = {
        {"p", Tensor::from_vector(pi, {1000}), Tensor::from_vector(gi, {1000})}};
    one.step(b, 1e-3);
    one.step(b, 1e-3);
    ASSERT_EQ(std::memcmp(b[0].param.f32(), a[0].param.f32() + i, 1000 * sizeof(float)), 0) << i;
  }
}

TEST(AdamW, StateRoundTripGivesBitwiseIdenticalContinuation) {
  AdamWConfig cfg;
  cfg.weight_decay = 0.01;
  AdamW a(cfg);
  std::vector<ParamRef> pa = {
      {"layer.0.lora_A", from_double(kInit, {2, 3}), Tensor::zeros({2, 3})},
      {"layer.0.lora_B", from_double(kInit, {3, 2}), Tensor::zeros({3, 2})}};
  auto set_grads = [](std::vector<ParamRef>& ps, size_t s) {
    for (auto& p : ps)
      std::memcpy(p.grad.f32(), from_double(kGrads[s], {6}).f32(), 6 * sizeof(float));
  };
  set_grads(pa, 0);
  a.step(pa, 1e-2);
  set_grads(pa, 1);
  a.step(pa, 2e-2);

  // Save exactly as a checkpoint would: a safetensors file plus the step count, read back mmapped.
  ScratchDir dir;
  const std::string file = dir.file("optimizer.safetensors");
  io::write_safetensors(file, a.state_tensors());
  const auto st = io::SafetensorsFile::open(file);
  std::map<std::string, Tensor> loaded;
  for (const auto& info : st.tensors()) loaded[info.name] = st.get(info.name);
  ASSERT_EQ(loaded.size(), 4u);
  EXPECT_TRUE(loaded.count("layer.0.lora_A.exp_avg"));
  EXPECT_TRUE(loaded.count("layer.0.lora_B.exp_avg_sq"));

  AdamW b(cfg);
  b.load_state(loaded, a.steps());
  EXPECT_EQ(b.steps(), 2);
  std::vector<ParamRef> pb = {{"layer.0.lora_A", pa[0].param.clone(), Tensor::zeros({2, 3})},
                              {"layer.0.lora_B", pa[1].param.clone(), Tensor::zeros({3, 2})}};
  b.check_params(pb);
  for (size_t s = 2; s < 3; ++s) {
    set_grads(pa, s);
    set_grads(pb, s);
    a.step(pa, 1e-2);
    b.step(pb, 1e-2);
  }
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(bitwise_equal(pa[i].param, pb[i].param)) << i;
  const auto sa = a.state_tensors(), sb = b.state_tensors();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_TRUE(bitwise_equal(sa[i].second, sb[i].second)) << sa[i].first;
  }
}

TEST(AdamW, LoadStateAcceptsBf16AndCopies) {
  AdamW opt(AdamWConfig{});
  Tensor m = Tensor::from_vector({0.5f, 1.0f}, {2}).to(DType::BF16);
  Tensor v = Tensor::from_vector({0.25f, 2.0f}, {2});
  opt.load_state({{"p.exp_avg", m}, {"p.exp_avg_sq", v}}, 7);
  v.f32()[0] = 100.0f;  // the optimizer holds its own copy
  const auto state = opt.state_tensors();
  EXPECT_EQ(state[0].second.dtype(), DType::F32);
  EXPECT_EQ(state[0].second.f32()[1], 1.0f);
  EXPECT_EQ(state[1].second.f32()[0], 0.25f);
  EXPECT_EQ(opt.steps(), 7);
}

TEST(AdamW, LoadStateRejectsBadStateAndChangesNothing) {
  AdamW opt(AdamWConfig{});
  std::vector<ParamRef> params = {{"q", Tensor::zeros({2, 2}), Tensor::zeros({2, 2})}};
  opt.step(params, 1e-3);
  auto z = [](Shape s) { return Tensor::zeros(s); };
  expect_error(
      [&] {
        opt.load_state({{"q.exp_avg", z({2, 2})}}, 1);
      },
      "AdamW", {"'q'", "no exp_avg_sq"});
  expect_error(
      [&] {
        opt.load_state({{"q.exp_avg", z({2, 2})}, {"q.exp_avg_sq", z({4})}}, 1);
      },
      "AdamW", {"'q'", "[2, 2]", "[4]"});
  expect_error([&] { opt.load_state({{"q.momentum", z({2, 2})}}, 1); }, "AdamW", {"q.momentum"});
  expect_error([&] { opt.load_state({}, -1); }, "AdamW", {"-1"});
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_EQ(opt.state_tensors().size(), 2u);
}

TEST(AdamW, StepRejectsMismatchesNamingTheParameter) {
  AdamW opt(AdamWConfig{});
  std::vector<ParamRef> params = {{"q", Tensor::zeros({2, 2}), Tensor::zeros({2, 2})}};
  opt.load_state({{"q.exp_avg", Tensor::zeros({2, 3})}, {"q.exp_avg_sq", Tensor::zeros({2, 3})}},
                 3);
  // State from a checkpoint for another shape: both shapes named; nothing changes.
  expect_error([&] { opt.step(params, 1e-3); }, "AdamW", {"'q'", "[2, 3]", "[2, 2]"});
  expect_error([&] { opt.check_params(params); }, "AdamW", {"'q'", "[2, 3]", "[2, 2]"});
  EXPECT_EQ(opt.steps(), 3);

  AdamW fresh(AdamWConfig{});
  std::vector<ParamRef> bad_grad = {{"g", Tensor::zeros({2}), Tensor::zeros({3})}};
  expect_error([&] { fresh.step(bad_grad, 1e-3); }, "AdamW", {"'g'", "[3]", "[2]"});
  std::vector<ParamRef> no_grad = {{"g", Tensor::zeros({2}), Tensor()}};
  expect_error([&] { fresh.step(no_grad, 1e-3); }, "AdamW", {"'g'", "grad", "undefined"});
  std::vector<ParamRef> bf16 = {{"h", Tensor::zeros({2}, DType::BF16), Tensor::zeros({2})}};
  expect_error([&] { fresh.step(bf16, 1e-3); }, "AdamW", {"'h'", "f32"});
  std::vector<ParamRef> dup = {{"d", Tensor::zeros({2}), Tensor::zeros({2})},
                               {"d", Tensor::zeros({2}), Tensor::zeros({2})}};
  expect_error([&] { fresh.step(dup, 1e-3); }, "AdamW", {"'d'", "twice"});
  expect_error([&] { fresh.step(params, -1.0); }, "AdamW", {"learning rate"});
  EXPECT_EQ(fresh.steps(), 0);

  // The parameter set is fixed after the first step.
  fresh.step(params, 1e-3);
  std::vector<ParamRef> more = params;
  more.push_back({"late", Tensor::zeros({2}), Tensor::zeros({2})});
  expect_error([&] { fresh.step(more, 1e-3); }, "AdamW", {"'late'", "must not change"});
  std::vector<ParamRef> none;
  expect_error([&] { fresh.step(none, 1e-3); }, "AdamW", {"'q'", "missing"});
  EXPECT_EQ(fresh.steps(), 1);
}

TEST(AdamW, ConstructorValidatesLikeTorch) {
  auto make = [](auto edit) {
    AdamWConfig c;
    edit(c);
    AdamW opt(c);
  };
  expect_error([&] { make([](AdamWConfig& c) { c.lr = -1; }); }, "AdamW", {"learning rate"});
  expect_error([&] { make([](AdamWConfig& c) { c.beta1 = 1.0; }); }, "AdamW", {"index 0"});
  expect_error([&] { make([](AdamWConfig& c) { c.beta2 = -0.1; }); }, "AdamW", {"index 1"});
  expect_error([&] { make([](AdamWConfig& c) { c.eps = -1e-8; }); }, "AdamW", {"epsilon"});
  expect_error([&] { make([](AdamWConfig& c) { c.weight_decay = -0.1; }); }, "AdamW",
               {"weight_decay"});
}
