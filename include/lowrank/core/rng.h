#pragma once
// Counter-based RNG (Philox-4x32-10). Its whole state is (seed, offset), so it checkpoints
// exactly and the CUDA backend can draw the same numbers as the CPU in parallel.
#include <array>
#include <cstdint>

namespace lowrank {

// One Philox-4x32-10 block: 4 random 32-bit words for (key, counter).
std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo);

class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}

  uint32_t next_u32();
  uint64_t next_u64();
  float uniform();                 // [0, 1)
  float uniform(float lo, float hi);
  float normal();                  // N(0, 1), Box-Muller
  uint64_t below(uint64_t n);      // uniform integer in [0, n)

  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }  // number of 32-bit words drawn so far

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace lowrank
