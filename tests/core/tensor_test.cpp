#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "lowrank/core/dtype.h"
#include "lowrank/core/rng.h"
#include "lowrank/core/tensor.h"

using namespace lowrank;

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-3.5f)), -3.5f);
  // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

// convert_floats' own loops for f32 <-> bf16 (large arrays: its threads too) give what the
// per-element helpers give, NaN, infinities, ties and denormals included.
TEST(DType, ConvertFloatsEqualsTheElementHelpers) {
  const int64_t n = (1 << 17) + 3;
  std::vector<float> f(n);
  Rng rng(11);
  for (int64_t i = 0; i < n; ++i) f[i] = rng.normal() * std::ldexp(1.0f, static_cast<int>(i % 200) - 100);
  const float special[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1e-40f};
  for (int i = 0; i < 9; ++i) f[i * 1000] = special[i];
  std::vector<uint16_t> h(n);
  convert_floats(f.data(), DType::F32, h.data(), DType::BF16, n);
  std::vector<float> back(n);
  convert_floats(h.data(), DType::BF16, back.data(), DType::F32, n);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(h[i], f32_to_bf16(f[i])) << i << " " << f[i];
    const float want = bf16_to_f32(h[i]);
    ASSERT_TRUE(std::memcmp(&back[i], &want, 4) == 0) << i;
  }
}

TEST(DType, F16RoundTrip) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f16_to_f32(0x0001), 5.9604645e-08f);
  // Exhaustive: every finite half converts to float and back to the same bits.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) == 0x1f) continue;
    EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(DType, Names) {
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_FALSE(parse_dtype("F33").has_value());
  EXPECT_EQ(parse_user_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

TEST(Tensor, ShapesViewsAndConversion) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.dim(-1), 3);
  Tensor row = t.slice_rows(1, 2);
  EXPECT_EQ(row.numel(), 3);
  EXPECT_EQ(row.f32()[0], 4.0f);
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  EXPECT_EQ(b.item(5), 6.0f);
  Tensor c = t.clone();
  c.f32()[0] = 9;
  EXPECT_EQ(t.f32()[0], 1.0f);
  EXPECT_THROW(shape_numel({1LL << 40, 1LL << 40}), Error);
  EXPECT_THROW(shape_numel({-1}), Error);
}

TEST(Tensor, DeviceParsing) {
  EXPECT_TRUE(parse_device("cpu").is_cpu());
  EXPECT_EQ(parse_device("cuda:1").index, 1);
  EXPECT_THROW(parse_device("gpu"), Error);
  EXPECT_THROW(parse_device("cuda:x"), Error);
}

TEST(Rng, DeterministicAndResumable) {
  Rng a(42), b(42);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u32(), b.next_u32());
  Rng c(42, a.offset());
  EXPECT_EQ(a.next_u32(), c.next_u32());
  Rng d(7);
  double sum = 0, sq = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    float x = d.normal();
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.03);
  EXPECT_NEAR(sq / n, 1.0, 0.05);
  for (int i = 0; i < 1000; ++i) {
    float u = d.uniform();
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
  }
}
