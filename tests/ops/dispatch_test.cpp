// The op layer: CPU dispatch of the device-resident ops against the code they replace (LoRA
// dropout, AdamW, grad norm, cross-entropy), and the errors for tensors on other devices.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "lowrank/core/rng.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/grad_clip.h"
#include "lowrank/train/optimizer.h"

using namespace lowrank;

namespace {
Tensor random_t(const Shape& s, uint64_t seed, float amp = 1.0f) {
  Tensor t = Tensor::empty(s);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.uniform(-amp, amp);
  return t;
}
Tensor i32(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}
}  // namespace

TEST(OpsDispatch, DropoutKeepsWhereItsDrawIsBelowKeep) {
  // A small tensor, and one large enough for the parallel loop; offsets not on a Philox block.
  for (const auto& [shape, offset] : {std::pair{Shape{13, 29}, uint64_t{11}}, std::pair{Shape{300, 301}, uint64_t{6}}}) {
    Tensor x = random_t(shape, 1);
    const double p = 0.05;
    const float keep = static_cast<float>(1.0 - p);
    Tensor mask;
    Tensor got = ops::dropout(x, p, 7, offset, &mask);
    for (int64_t k = 0; k < x.numel(); ++k) {
      // Position offset + k: the 16-bit half (offset + k) % 8 of Philox block (offset + k) / 8.
      const uint64_t pos = offset + static_cast<uint64_t>(k);
      const uint32_t word = philox4x32(7, 0, pos / 8)[(pos % 8) / 2], half = pos % 2 ? word >> 16 : word & 0xFFFFu;
      const bool kept = static_cast<float>(half) * (1.0f / 65536.0f) < keep;
      ASSERT_EQ(mask.data<uint8_t>()[k], kept) << k;
      ASSERT_EQ(got.f32()[k], kept ? x.f32()[k] / keep : 0.0f) << k;
    }
    Tensor dx = Tensor::zeros(x.shape());
    ops::dropout_backward_add_(dx, x, mask, p);
    for (int64_t k = 0; k < x.numel(); ++k) ASSERT_EQ(dx.f32()[k], got.f32()[k]) << k;
  }
}

TEST(OpsDispatch, DropoutDeviceOffsetShiftsTheDraws) {
  Tensor x = random_t({13, 29}, 2), delta = Tensor::empty({1}, DType::I64);
  delta.data<int64_t>()[0] = 517;
  Tensor mask, want_mask;
  const Tensor got = ops::dropout(x, 0.3, 7, 1000, &mask, delta);
  const Tensor want = ops::dropout(x, 0.3, 7, 1517, &want_mask);
  const Tensor unshifted = ops::dropout(x, 0.3, 7, 1000, &want_mask);
  EXPECT_EQ(std::memcmp(got.f32(), want.f32(), x.numel() * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(got.f32(), unshifted.f32(), x.numel() * sizeof(float)), 0);
  delta = Tensor::empty({2}, DType::I64);
  EXPECT_THROW(ops::dropout(x, 0.3, 7, 1000, &mask, delta), InternalError);
}

TEST(OpsDispatch, AdamWUpdateEqualsTrainAdamW) {
  train::AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  train::AdamW opt(cfg);
  Tensor p = random_t({100}, 1), p2 = p.clone(), m = Tensor::zeros({100}), v = Tensor::zeros({100});
  for (int step = 1; step <= 3; ++step) {
    Tensor g = random_t({100}, 10 + step, 0.1f);
    std::vector<train::ParamRef> refs{{"p", p, g, true}};
    const double lr = 1e-2;
    opt.step(refs, lr);
    ops::AdamWScalars s;
    s.apply_decay = true;
    s.decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
    s.lerp_w = static_cast<float>(1.0 - cfg.beta1);
    s.beta2 = static_cast<float>(cfg.beta2);
    s.one_minus_beta2 = static_cast<float>(1.0 - cfg.beta2);
    s.bc2_sqrt = static_cast<float>(std::pow(1.0 - std::pow(cfg.beta2, step), 0.5));
    s.eps = static_cast<float>(cfg.eps);
    s.neg_step = static_cast<float>(-lr / (1.0 - std::pow(cfg.beta1, step)));
    ops::adamw_update_(p2, g, m, v, s);
  }
  EXPECT_EQ(std::memcmp(p.raw(), p2.raw(), p.nbytes()), 0);
}

// The norm against a double-precision sum on the host; the clip against torch's rule written out
// here (coef = max_norm / (norm + 1e-6), applied when < 1, as one f32 multiply per element).
TEST(OpsDispatch, GradNormAndClipFollowTorchsRule) {
  Tensor g = random_t({50000}, 3), before = g.clone();
  double sumsq = 0;
  for (int64_t i = 0; i < g.numel(); ++i) sumsq += static_cast<double>(g.f32()[i]) * g.f32()[i];
  std::vector<train::ParamRef> refs{{"g", g, g, true}};
  const double norm = train::global_grad_norm(refs);
  EXPECT_NEAR(norm, std::sqrt(sumsq), 1e-12 * std::sqrt(sumsq));
  EXPECT_EQ(train::clip_grad_norm(refs, norm * 2), norm);  // above the norm: unchanged
  EXPECT_EQ(std::memcmp(g.raw(), before.raw(), g.nbytes()), 0);
  const double returned = train::clip_grad_norm(refs, norm / 3);
  EXPECT_EQ(returned, norm);  // the norm before clipping
  const float coef = static_cast<float>(norm / 3 / (norm + 1e-6));
  int64_t wrong = 0;
  for (int64_t i = 0; i < g.numel(); ++i) wrong += g.f32()[i] != before.f32()[i] * coef;
  EXPECT_EQ(wrong, 0);
  EXPECT_NEAR(train::global_grad_norm(refs), norm / 3, 1e-6 * norm);
}

TEST(OpsDispatch, CrossEntropyChunkMatchesBackwardAndWorksInPlace) {
  Tensor logits = random_t({9, 101}, 4, 5.0f);
  const std::vector<int32_t> tg{1, -100, 100, 0, 5, 5, -100, 77, 3};
  Tensor dref = Tensor::zeros(logits.shape());
  const double lref = ops::cross_entropy_backward(logits, tg, 0.5f, dref);
  Tensor acc = Tensor::zeros({1}, DType::F64), d;
  ops::cross_entropy_chunk(logits, i32(tg), 0.5f, d, acc);
  EXPECT_EQ(acc.data<double>()[0], lref);
  EXPECT_EQ(std::memcmp(d.raw(), dref.raw(), d.nbytes()), 0);
  Tensor inplace = logits.clone();
  ops::cross_entropy_chunk(inplace, i32(tg), 0.5f, inplace, acc);
  EXPECT_EQ(std::memcmp(inplace.raw(), dref.raw(), d.nbytes()), 0);
  EXPECT_EQ(acc.data<double>()[0], 2 * lref);
}

TEST(OpsDispatch, TensorIdFormsEqualVectorForms) {
  Tensor table = random_t({10, 4}, 5);
  const std::vector<int32_t> ids{3, 9, 0, 3};
  Tensor a = ops::embedding(table, ids), b = ops::embedding(table, i32(ids));
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  EXPECT_THROW(ops::embedding(table, i32({10})), Error);
  Tensor g1 = Tensor::zeros({10, 4}), g2 = Tensor::zeros({10, 4});
  ops::embedding_backward_(g1, ids, a);
  ops::embedding_backward_(g2, i32(ids), a);
  EXPECT_EQ(std::memcmp(g1.raw(), g2.raw(), g1.nbytes()), 0);
  Tensor cos = random_t({8, 2}, 6), sin = random_t({8, 2}, 7);
  Tensor x1 = random_t({4, 8}, 8), x2 = x1.clone();
  const std::vector<int32_t> pos{1, 7, 0, 3};
  ops::rope_(x1, 2, pos, cos, sin);
  ops::rope_(x2, 2, i32(pos), cos, sin);
  EXPECT_EQ(std::memcmp(x1.raw(), x2.raw(), x1.nbytes()), 0);
}

TEST(OpsDispatch, TensorsOnOtherDevicesAreClearErrors) {
  // A CUDA-tagged tensor that is never touched: the dispatch must refuse before any kernel runs.
  auto owner = std::make_shared<std::vector<float>>(4);
  Tensor fake = Tensor::wrap(owner->data(), {2, 2}, DType::F32, Device::cuda(0), owner);
  Tensor y = Tensor::zeros({2, 2});
  try {
    ops::add_(y, fake);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different devices (cpu and cuda:0)"), std::string::npos) << e.what();
  }
#ifndef LOWRANK_WITH_CUDA
  try {
    ops::activation(fake, ops::Act::SiLU);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without the CUDA backend"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tensor::empty({2}, DType::F32, Device::cuda(0)), Error);
#endif
}

TEST(OpsDispatch, MulAndCopyColumns) {
  Tensor y = random_t({3, 4}, 20), x = random_t({3, 4}, 21), ref = y.clone();
  ops::mul_(y, x);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.f32()[i], ref.f32()[i] * x.f32()[i]);
  // Split a fused [n, 3d] projection into q, k, v and write a gradient back.
  const int64_t n = 5, d = 4;
  Tensor qkv = random_t({n, 3 * d}, 22);
  Tensor k = Tensor::empty({n, d});
  ops::copy_columns_(k, 0, qkv, d, d);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(k.f32()[r * d + c], qkv.f32()[r * 3 * d + d + c]);
  Tensor back = Tensor::zeros({n, 3 * d});
  ops::copy_columns_(back, 2 * d, k, 0, d);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < 3 * d; ++c)
      EXPECT_EQ(back.f32()[r * 3 * d + c], c >= 2 * d ? k.f32()[r * d + c - 2 * d] : 0.0f);
  EXPECT_THROW(ops::copy_columns_(k, 1, qkv, 0, d), InternalError);  // past dst's columns
}

// matmul_blocks on column blocks of wider matrices equals the plain GEMMs on copies of the blocks,
// and leaves the output's other columns alone.
TEST(OpsDispatch, MatmulOnColumnBlocksEqualsPlainMatmul) {
  const int64_t n = 6, in = 5, wide = 9, r = 3, col = 4;  // a [n, r] block at column 4 of [n, 9]
  Tensor h = random_t({n, wide}, 30), x = random_t({n, in}, 31), b = random_t({in, r}, 32);
  auto block = [&](const Tensor& t) {
    Tensor c = Tensor::empty({t.dim(0), r});
    ops::copy_columns_(c, 0, t, col, r);
    return c;
  };
  auto expect_near = [](const Tensor& got, const Tensor& want) {
    ASSERT_EQ(got.numel(), want.numel());
    for (int64_t i = 0; i < got.numel(); ++i) EXPECT_NEAR(got.f32()[i], want.f32()[i], 1e-5f) << i;
  };
  // NT: y [n, in] = 0.5 · h_block b ᵀ + y
  Tensor y = random_t({n, in}, 33), want = y.clone();
  ops::matmul_blocks(ops::Gemm::NT, {h, col, r}, ops::ColumnBlock::all(b), ops::ColumnBlock::all(y), 0.5f, 1.0f);
  ops::matmul_nt(block(h), b, want, 0.5f, 1.0f);
  expect_near(y, want);
  // TN: g [in, r] = x ᵀ h_block
  Tensor g = Tensor::empty({in, r}), want_g;
  ops::matmul_blocks(ops::Gemm::TN, ops::ColumnBlock::all(x), {h, col, r}, ops::ColumnBlock::all(g), 1.0f, 0.0f);
  ops::matmul_tn(x, block(h), want_g);
  expect_near(g, want_g);
  // NN into a block: out[:, col:col+r] = 2 · x b; the other columns keep their values.
  Tensor out = random_t({n, wide}, 34), before = out.clone(), want_nn;
  ops::matmul_blocks(ops::Gemm::NN, ops::ColumnBlock::all(x), ops::ColumnBlock::all(b), {out, col, r}, 2.0f, 0.0f);
  ops::matmul_nn(x, b, want_nn, 2.0f);
  expect_near(block(out), want_nn);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < wide; ++c)
      if (c < col || c >= col + r) EXPECT_EQ(out.f32()[i * wide + c], before.f32()[i * wide + c]);
  // A block past its tensor's columns, or blocks that do not fit each other, are errors.
  EXPECT_THROW(ops::matmul_blocks(ops::Gemm::NT, {h, 7, r}, ops::ColumnBlock::all(b), ops::ColumnBlock::all(y)),
               InternalError);
  EXPECT_THROW(ops::matmul_blocks(ops::Gemm::NT, {h, 0, r + 1}, ops::ColumnBlock::all(b), ops::ColumnBlock::all(y)),
               InternalError);
}

// Checks of the CPU kernels happen before their OpenMP loops: a bad target (an Error) or position
// (an internal check) on a shape large enough to run in parallel throws instead of calling
// std::terminate from inside the region.
TEST(OpsDispatch, BadTargetsAndPositionsInParallelCpuLoopsAreErrors) {
  const int64_t n = 64, V = 4096;  // n * V > the kernels' parallel threshold
  Tensor logits = Tensor::zeros({n, V});
  std::vector<int32_t> targets(n, 1);
  targets[37] = static_cast<int32_t>(V);
  Tensor loss = Tensor::zeros({1}, DType::F64), dlogits;
  EXPECT_THROW(ops::cross_entropy_chunk(logits, Tensor::from_ints(targets), 1.0f, dlogits, loss), Error);
  int64_t count = 0;
  EXPECT_THROW(ops::cross_entropy_sum(logits, targets, &count), Error);
  Tensor dl = Tensor::zeros({n, V});
  EXPECT_THROW(ops::cross_entropy_backward(logits, targets, 1.0f, dl), Error);
  Tensor x = Tensor::zeros({n, 8 * 128}), cos = Tensor::zeros({16, 64}), sin = Tensor::zeros({16, 64});
  std::vector<int32_t> pos(n, 0);
  pos[50] = 16;
  EXPECT_THROW(ops::rope_(x, 8, pos, cos, sin), InternalError);  // positions are the model's own
}
