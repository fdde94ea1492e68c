// LoRA at a padded rank (lora/rank_padding.h): the CPU computes at r itself; a value cast into the
// top-left block of a wider tensor leaves the rest as it was; AdamW's working copies may be wider
// than their parameters (the GPU's padded A_work / B_work) and get the same values in that block
// as the same-size copy does.
#include <gtest/gtest.h>

#include <cstring>

#include "lowrank/core/dtype.h"
#include "lowrank/lora/rank_padding.h"
#include "lowrank/ops/ops.h"
#include "random_tensor.h"

using namespace lowrank;
using test::random_tensor;

namespace {
float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }
}  // namespace

TEST(RankPadding, TheCpuComputesAtTheRankItself) {
  for (int64_t r : {1, 4, 8, 12, 64}) EXPECT_EQ(lora::compute_rank(r, Device::cpu()), r);
}

TEST(RankPadding, CastIntoTheTopLeftBlock) {
  const Tensor value = random_tensor({3, 5}, 1);
  Tensor out = Tensor::full({4, 8}, 7.0f);
  lora::cast_into_block(out, value);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 8; ++j)
      EXPECT_EQ(out.f32()[i * 8 + j], i < 3 && j < 5 ? value.f32()[i * 5 + j] : 7.0f) << i << ", " << j;
  // Padded: zeros around the block, in the dtype asked for.
  const Tensor p = lora::padded(value, 8, 5, DType::BF16);
  ASSERT_EQ(p.shape(), (Shape{8, 5}));
  const Tensor back = p.to(DType::F32);
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < 5; ++j)
      EXPECT_EQ(back.f32()[i * 5 + j], i < 3 ? bf16_round(value.f32()[i * 5 + j]) : 0.0f) << i << ", " << j;
  // A block that does not fit is an error, not a write past the end.
  Tensor small = Tensor::zeros({2, 8});
  EXPECT_ANY_THROW(lora::cast_into_block(small, value));
}

TEST(RankPadding, AdamWWritesAWiderWorkingCopysBlock) {
  const Tensor p0 = random_tensor({3, 5}, 2), g = random_tensor({3, 5}, 3);
  ops::AdamWScalars s;
  s.neg_step = -1e-2f;
  Tensor p1 = p0.clone(), m1 = Tensor::zeros({3, 5}), v1 = Tensor::zeros({3, 5});
  Tensor p2 = p0.clone(), m2 = Tensor::zeros({3, 5}), v2 = Tensor::zeros({3, 5});
  Tensor same = Tensor::zeros({3, 5}, DType::BF16), wide = Tensor::full({8, 8}, 5.0f).to(DType::BF16);
  ops::adamw_update_all_({p1}, {g}, {m1}, {v1}, {0}, s, {same});
  ops::adamw_update_all_({p2}, {g}, {m2}, {v2}, {0}, s, {wide});
  ASSERT_EQ(std::memcmp(p1.f32(), p2.f32(), p1.nbytes()), 0);
  const Tensor a = same.to(DType::F32), b = wide.to(DType::F32);
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < 8; ++j)
      EXPECT_EQ(b.f32()[i * 8 + j], i < 3 && j < 5 ? a.f32()[i * 5 + j] : 5.0f) << i << ", " << j;
  // The updated values, not the old ones, are in the copy.
  EXPECT_NE(a.f32()[0], bf16_round(p0.f32()[0]));
}
