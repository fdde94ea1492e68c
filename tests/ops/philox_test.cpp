// The host/device Philox (backend/philox.h) and the CPU dropout's (backend/cpu/philox_blocks.h)
// draw exactly what lowrank::Rng draws.
#include <gtest/gtest.h>

#include <cmath>
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

// LoRA dropout's draws (philox.h): position pos is the 16-bit half pos % 8 of block pos / 8, low
// half first; kept when half · 2^-16 < keep. dropout_kept8 at any position, in or across blocks.
TEST(Philox, DropoutDrawsAreHalfWords) {
  const uint64_t seed = 0xDEADBEEFCAFEULL;
  for (float keep : {0.95f, 0.5f, 0.9f, 0.1f}) {
    const uint32_t below = dropout_below(keep);
    EXPECT_LE(std::abs(static_cast<double>(below) / 65536.0 - keep), 1.0 / 65536.0) << keep;
    for (uint64_t pos : {uint64_t(0), uint64_t(3), uint64_t(8), uint64_t(13), uint64_t(1) << 35, (uint64_t(1) << 35) + 7}) {
      const uint32_t got = dropout_kept8(seed, pos, below);
      for (int i = 0; i < 8; ++i) {
        const uint64_t at = pos + static_cast<uint64_t>(i);
        const uint32_t word = philox4x32(seed, 0, at / 8)[(at % 8) / 2];
        const uint32_t half = at % 2 ? word >> 16 : word & 0xFFFFu;
        ASSERT_EQ(got >> i & 1u, static_cast<float>(half) * (1.0f / 65536.0f) < keep ? 1u : 0u)
            << "keep " << keep << " pos " << at;
      }
      if (pos % 8 == 0) EXPECT_EQ(got, dropout_block_kept(seed, pos / 8, below));
    }
  }
  EXPECT_EQ(dropout_below(0.5f), 32768u);          // keep · 2^16 whole: kept below it exactly
  EXPECT_EQ(dropout_below(0.95f), 62260u);         // ceil(62259.2)
}

// The draws keep a fraction keep of the elements (a wrong bit field would not): 2^20 draws, p =
// 0.05, the fraction within 7 standard deviations (1.5e-3).
TEST(Philox, DropoutKeepsTheRightFraction) {
  for (float keep : {0.95f, 0.7f}) {
    const uint32_t below = dropout_below(keep);
    int64_t kept = 0;
    const int64_t blocks = int64_t(1) << 17;
    for (int64_t b = 0; b < blocks; ++b) kept += __builtin_popcount(dropout_block_kept(42, static_cast<uint64_t>(b), below));
    const double fraction = static_cast<double>(kept) / static_cast<double>(8 * blocks);
    EXPECT_NEAR(fraction, keep, 7.0 * std::sqrt(keep * (1.0 - keep) / static_cast<double>(8 * blocks))) << keep;
  }
}
