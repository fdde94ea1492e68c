// The host/device Philox (backend/philox.h) and the CPU dropout's (backend/cpu/philox_blocks.h)
// draw exactly what lowrank::Rng draws.
#include <gtest/gtest.h>

#include <vector>

#include "backend/cpu/philox_blocks.h"

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

// The CPU dropout's Philox over many blocks (AVX-512 where the CPU has it, else a vectorised loop)
// draws rng.h's words: counts off its 16-block steps, counters across a 2^32 carry.
TEST(Philox, CpuBlocksEqualPhilox4x32) {
  for (uint64_t first : {uint64_t(0), uint64_t(12345), (uint64_t(1) << 32) - 21, uint64_t(0xFFFFFFFFFFFFFF00ULL)}) {
    for (int64_t count : {int64_t(1), int64_t(16), int64_t(53), int64_t(1024)}) {
      std::vector<uint32_t> words(4 * count), loop(4 * count);
      cpu::philox_blocks(0xDEADBEEFCAFEULL, first, count, words.data());
      cpu::philox_blocks_loop(0xDEADBEEFCAFEULL, first, count, loop.data());
      for (int64_t b = 0; b < count; ++b) {
        const auto ref = philox4x32(0xDEADBEEFCAFEULL, 0, first + static_cast<uint64_t>(b));
        for (int lane = 0; lane < 4; ++lane) {
          ASSERT_EQ(words[4 * b + lane], ref[lane]) << "first " << first << " block " << b;
          ASSERT_EQ(loop[4 * b + lane], ref[lane]) << "first " << first << " block " << b;
        }
      }
    }
  }
}
