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

// LoRA dropout's draws (ops::dropout, dropout_shrink; every backend): stream position `pos` is
// the 16-bit half pos % 8 of Philox block pos / 8 (its word (pos % 8) / 2, the low half first),
// eight draws a block. The element is kept when half · 2^-16 < keep, i.e. half < dropout_below(keep)
// = ceil(keep · 2^16): P(kept) = ceil(keep · 2^16) / 2^16, within 2^-16 of keep. Half a block a
// draw would do: the draws are what LoRA dropout's kernels spend their time on (a Philox block
// is ~100 integer instructions), and 16 bits resolve any dropout p a user sets.
LR_HOST_DEVICE uint32_t dropout_below(float keep) {
  const double scaled = static_cast<double>(keep) * 65536.0;
  const auto floor = static_cast<uint32_t>(scaled);
  return floor + (static_cast<double>(floor) < scaled ? 1u : 0u);
}

// Bit i set: the element at position block · 8 + i is kept (i < 8).
LR_HOST_DEVICE uint32_t dropout_block_kept(uint64_t seed, uint64_t block, uint32_t below) {
  const PhiloxBlock b = philox4x32_10(seed, 0, block);
  uint32_t m = 0;
  for (int w = 0; w < 4; ++w)
    m |= static_cast<uint32_t>((b.w[w] & 0xFFFFu) < below) << (2 * w) |
         static_cast<uint32_t>((b.w[w] >> 16) < below) << (2 * w + 1);
  return m;
}

// Bit i set: the element at position pos + i is kept (i < 8): one Philox block when pos % 8 == 0,
// else two.
LR_HOST_DEVICE uint32_t dropout_kept8(uint64_t seed, uint64_t pos, uint32_t below) {
  const uint32_t shift = static_cast<uint32_t>(pos % 8), lo = dropout_block_kept(seed, pos / 8, below);
  if (shift == 0) return lo;
  const uint32_t hi = dropout_block_kept(seed, pos / 8 + 1, below);
  return ((lo >> shift) | (hi << (8 - shift))) & 0xFFu;
}

// Rng(seed, offset).uniform(): word `offset` of the stream (lane offset % 4 of block offset / 4),
// its top 24 bits scaled to [0, 1).
LR_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset) {
  const PhiloxBlock b = philox4x32_10(seed, 0, offset / 4);
  return static_cast<float>(b.w[offset % 4] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace lowrank
