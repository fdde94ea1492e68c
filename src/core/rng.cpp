#include "lowrank/core/rng.h"

#include <cmath>

namespace lowrank {

std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  uint32_t c[4] = {static_cast<uint32_t>(counter_lo), static_cast<uint32_t>(counter_lo >> 32),
                   static_cast<uint32_t>(counter_hi), static_cast<uint32_t>(counter_hi >> 32)};
  philox4x32_rounds(c, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
  return {c[0], c[1], c[2], c[3]};
}

uint32_t Rng::next_u32() {
  uint64_t block = offset_ / 4;
  uint32_t lane = static_cast<uint32_t>(offset_ % 4);
  ++offset_;
  return philox4x32(seed_, 0, block)[lane];
}

uint64_t Rng::next_u64() {
  uint64_t hi = next_u32();
  return (hi << 32) | next_u32();
}

float Rng::uniform() { return static_cast<float>(next_u32() >> 8) * (1.0f / 16777216.0f); }

float Rng::uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

float Rng::normal() {
  // 1 - u keeps the log argument in (0, 1].
  double u1 = 1.0 - static_cast<double>(next_u32()) / 4294967296.0;
  double u2 = static_cast<double>(next_u32()) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

uint64_t Rng::below(uint64_t n) {
  if (n <= 1) return 0;
  // Rejection sampling: no modulo bias.
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = next_u64();
  while (x >= limit);
  return x % n;
}

}  // namespace lowrank
