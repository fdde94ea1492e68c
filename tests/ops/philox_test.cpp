// The host/device Philox (backend/philox.h) draws exactly what lowrank::Rng draws.
#include <gtest/gtest.h>

#include "lowrank/backend/philox.h"
#include "lowrank/core/rng.h"

using namespace lowrank;

TEST(Philox, SameWordsAndUniformsAsRng) {
  for (uint64_t seed : {uint64_t(0), uint64_t(42), uint64_t(0xDEADBEEFCAFEULL)}) {
    for (uint64_t block : {uint64_t(0), uint64_t(1), uint64_t(123456789), uint64_t(1) << 40}) {
      const auto ref = philox4x32(seed, 0, block);
      const PhiloxBlock got = philox4x32_10(seed, 0, block);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(got.w[i], ref[i]);
    }
    Rng rng(seed, 5);
    for (uint64_t off = 5; off < 300; ++off) ASSERT_EQ(philox_uniform(seed, off), rng.uniform()) << off;
  }
}
