// LoRA's K-extension (lora/k_extension.h) on the CPU: the two ops it adds to (the norm's output
// into a column block, AdamW's second home of a working copy) and that it stays off where it does
// not apply.
// The K-extended training itself is compared with the expands on the GPU (CudaKExtension.*).
#include <gtest/gtest.h>

#include "lowrank/core/rng.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/k_extension.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/model.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/optimizer.h"
#include "lowrank/train/step.h"
#include "test_paths.h"

namespace lowrank {
namespace {

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.uniform(-1.0f, 1.0f);
  return t;
}

TEST(KExtension, TheNormWritesItsOutputIntoTheBlock) {
  const Tensor x = random_tensor({5, 12}, 1), w = random_tensor({12}, 2);
  Tensor wide = Tensor::full({5, 20}, 7.0f);
  const ops::ColumnBlock block{wide, 6, 12};
  Tensor rstd, plain_rstd;
  const Tensor y = ops::rmsnorm(x, w, 1e-5f, &rstd, &block);
  const Tensor plain = ops::rmsnorm(x, w, 1e-5f, &plain_rstd);
  EXPECT_EQ(y.raw(), wide.raw());
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(rstd.f32()[i], plain_rstd.f32()[i]);
    for (int64_t j = 0; j < 20; ++j) {
      const bool in_block = j >= 6 && j < 18;
      EXPECT_EQ(wide.f32()[i * 20 + j], in_block ? plain.f32()[i * 12 + j - 6] : 7.0f) << i << ", " << j;
    }
  }
  // Its backward reads the first columns of a wider dy as it reads a dense one.
  Tensor dw_wide = Tensor::zeros({12}), dw = Tensor::zeros({12});
  Tensor dense = Tensor::empty({5, 12});
  ops::copy_columns_(dense, 0, wide, 0, 12);
  const Tensor dx_wide = ops::rmsnorm_backward(wide, x, w, rstd, &dw_wide);
  const Tensor dx = ops::rmsnorm_backward(dense, x, w, rstd, &dw);
  for (int64_t k = 0; k < dx.numel(); ++k) ASSERT_EQ(dx_wide.f32()[k], dx.f32()[k]);
  for (int64_t k = 0; k < 12; ++k) ASSERT_EQ(dw_wide.f32()[k], dw.f32()[k]);
  EXPECT_ANY_THROW(ops::rmsnorm_backward(Tensor::zeros({5, 11}), x, w, rstd, nullptr));
  // A block that is not the output's shape is an error, not a write past the end.
  const ops::ColumnBlock too_far{wide, 10, 12}, narrow{wide, 0, 11};
  EXPECT_ANY_THROW(ops::rmsnorm(x, w, 1e-5f, nullptr, &too_far));
  EXPECT_ANY_THROW(ops::rmsnorm(x, w, 1e-5f, nullptr, &narrow));
}

// o's and down's output side: the norm's backward reads the residual gradient out of a wider
// buffer and writes dx into the first columns of another, leaving their other columns alone.
TEST(KExtension, TheNormBackwardReadsAndWritesWiderGradients) {
  const Tensor x = random_tensor({5, 12}, 5), w = random_tensor({12}, 6), dy = random_tensor({5, 12}, 7);
  const Tensor res = random_tensor({5, 12}, 8);
  Tensor wide_res = Tensor::full({5, 20}, 3.0f);
  ops::copy_columns_(wide_res, 0, res, 0, 12);
  Tensor rstd;
  ops::rmsnorm(x, w, 1e-5f, &rstd);
  Tensor dw = Tensor::zeros({12}), dw_dense = Tensor::zeros({12});
  const Tensor dense = ops::rmsnorm_backward(dy, x, w, rstd, &dw_dense, &res);
  Tensor into = Tensor::full({5, 16}, 9.0f);
  const Tensor got = ops::rmsnorm_backward(dy, x, w, rstd, &dw, &wide_res, &into);
  EXPECT_EQ(got.raw(), into.raw());
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 16; ++j)
      ASSERT_EQ(into.f32()[i * 16 + j], j < 12 ? dense.f32()[i * 12 + j] : 9.0f) << i << ", " << j;
  for (int64_t k = 0; k < 12; ++k) ASSERT_EQ(dw.f32()[k], dw_dense.f32()[k]);
  Tensor narrow = Tensor::zeros({5, 11}), other_rows = Tensor::zeros({6, 16});
  EXPECT_ANY_THROW(ops::rmsnorm_backward(dy, x, w, rstd, nullptr, &res, &narrow));
  EXPECT_ANY_THROW(ops::rmsnorm_backward(dy, x, w, rstd, nullptr, &res, &other_rows));
  EXPECT_ANY_THROW(ops::rmsnorm_backward(dy, x, w, rstd, nullptr, &narrow));  // a dres narrower than x
}

TEST(KExtension, AdamWWritesTheSecondHomeOfAWorkingCopy) {
  const Tensor p0 = random_tensor({3, 4}, 3), g = random_tensor({3, 4}, 4);
  ops::AdamWScalars s;
  s.neg_step = -1e-2f;
  Tensor p1 = p0.clone(), m1 = Tensor::zeros({3, 4}), v1 = Tensor::zeros({3, 4});
  Tensor p2 = p0.clone(), m2 = Tensor::zeros({3, 4}), v2 = Tensor::zeros({3, 4});
  Tensor same = Tensor::zeros({3, 4}, DType::BF16), copy = Tensor::zeros({3, 4}, DType::BF16);
  Tensor home = Tensor::full({4, 9}, 5.0f).to(DType::BF16);
  ops::adamw_update_all_({p1}, {g}, {m1}, {v1}, {0}, s, {same});
  ops::adamw_update_all_({p2}, {g}, {m2}, {v2}, {0}, s, {copy}, {{home, 2, 4}});
  const Tensor a = same.to(DType::F32), b = copy.to(DType::F32), h = home.to(DType::F32);
  for (int64_t k = 0; k < a.numel(); ++k) ASSERT_EQ(a.f32()[k], b.f32()[k]);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 9; ++j)
      EXPECT_EQ(h.f32()[i * 9 + j], i < 3 && j >= 2 && j < 6 ? a.f32()[i * 4 + j - 2] : 5.0f) << i << ", " << j;
  // A home that cannot hold the parameter is refused before anything changes.
  EXPECT_ANY_THROW(ops::adamw_update_all_({p2}, {g}, {m2}, {v2}, {0}, s, {copy}, {{home, 6, 4}}));
  EXPECT_ANY_THROW(ops::adamw_update_all_({p2}, {g}, {m2}, {v2}, {0}, s, {copy}, {{home.to(DType::F32), 2, 4}}));

  // Refreshing working copies (after a resume) writes the second home as well.
  Tensor again = Tensor::zeros({4, 9}, DType::BF16);
  std::vector<train::ParamRef> refs{{"p", p2, g, true, copy, 0, again, 2}};
  train::refresh_working_copies(refs);
  const Tensor r = again.to(DType::F32);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(r.f32()[i * 9 + 2 + j], b.f32()[i * 4 + j]) << i << ", " << j;
}

TEST(KExtension, OffOnTheCpu) {
  EXPECT_FALSE(lora::k_extension_applies(256, Device::cpu()));
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::LoraConfig lc;
  lc.r = 4;
  lc.all_linear = true;
  Rng init(1);
  lora::Adapter a = lora::Adapter::create(m, lc, init);
  a.allocate_grads();
  a.make_working_copies(DType::F32);
  lora::make_extended_weights(a, m);
  for (const lora::LoraPair& p : a.pairs) EXPECT_FALSE(p.W_ext.defined() || p.W_dx_ext.defined()) << p.module;
  for (const train::ParamRef& r : train::lora_params(a)) EXPECT_FALSE(r.working_also.defined()) << r.name;
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true);
  EXPECT_FALSE(hook.extended_input(0, 0, Tensor::zeros({4, m.config().hidden_size})).defined());
  EXPECT_FALSE(hook.extended_output_grad(0, Target::Down, Tensor::zeros({4, m.config().hidden_size})).defined());
}

}  // namespace
}  // namespace lowrank
