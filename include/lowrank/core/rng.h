#pragma once
// Counter-based RNG (Philox-4x32-10). Its whole state is (seed, offset), so it checkpoints
// exactly and the CUDA backend can draw the same numbers as the CPU in parallel.
#include <array>
#include <cstdint>

namespace lowrank {

// One Philox-4x32-10 block: 4 random 32-bit words for (key, counter).
std::array<uint32_t, 4> philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo);

// Philox-4x32-10's ten rounds on the counter words c with the key's words k0, k1, in place: the
// block philox4x32 returns. Inline, so that a loop over many counters vectorises (the CPU dropout).
inline void philox4x32_rounds(uint32_t (&c)[4], uint32_t k0, uint32_t k1) {
#pragma GCC unroll 10
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(p1);
    c[3] = static_cast<uint32_t>(p0);
    c[0] = n0;
    c[2] = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

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
