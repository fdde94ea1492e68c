#pragma once
// Philox-4x32-10 as one inline function for host and device code: the CUDA dropout draws the same
// numbers as lowrank::Rng (core/rng.h) for the same (seed, offset), and tests check both agree.
#include <cstdint>

#if defined(__CUDACC__)
#define LR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LR_HOST_DEVICE inline
#endif

namespace lowrank {

struct PhiloxBlock {
  uint32_t w[4];
};

// 4 random 32-bit words for (key, counter), as lowrank::philox4x32(key, counter_hi, counter_lo).
LR_HOST_DEVICE PhiloxBlock philox4x32_10(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n1 = static_cast<uint32_t>(p1);
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Rng(seed, offset).uniform(): word `offset` of the stream (lane offset % 4 of block offset / 4),
// its top 24 bits scaled to [0, 1).
LR_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset) {
  const PhiloxBlock b = philox4x32_10(seed, 0, offset / 4);
  return static_cast<float>(b.w[offset % 4] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace lowrank
