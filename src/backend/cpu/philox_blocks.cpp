// Philox-4x32-10 over many blocks (counters) at once: what the CPU dropout spends most of its time
// on (draws are made again in LoRA's backward rather than kept). The loop over blocks vectorises
// (AVX2 / baseline clones, target_clones.h), but GCC widens its 32 × 32 → 64-bit products through
// shuffles: ~14 cycles a block on AVX-512. The AVX-512 kernel below keeps 16 blocks' words in
// 32-bit lanes and takes each product's halves from vpmuludq on the even and the odd lanes:
// ~6 cycles a block, the same integer math, so the same words.
#include "backend/cpu/philox_blocks.h"

#include "backend/cpu/target_clones.h"
#include "lowrank/core/rng.h"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's intrinsics pass a self-initialised placeholder as their unused merge operand, which
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593): nothing is read uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define LOWRANK_PHILOX_AVX512 1
#endif

namespace lowrank::cpu {

LOWRANK_CPU_CLONES void philox_blocks_loop(uint64_t key, uint64_t first, int64_t count, uint32_t* __restrict words) {
  const uint32_t key0 = static_cast<uint32_t>(key), key1 = static_cast<uint32_t>(key >> 32);
  for (int64_t b = 0; b < count; ++b) {
    const uint64_t counter = first + static_cast<uint64_t>(b);
    uint32_t c[4] = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0, 0};
    philox4x32_rounds(c, key0, key1);
    for (int lane = 0; lane < 4; ++lane) words[4 * b + lane] = c[lane];
  }
}

#ifdef LOWRANK_PHILOX_AVX512
namespace {

__attribute__((target("avx512f"))) inline __m512i splat(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }

// The high and low 32 bits of m · c for 16 lanes: vpmuludq multiplies the even lanes, and the odd
// ones shifted down; each product's halves are blended back into place.
__attribute__((target("avx512f"))) inline void mul_hi_lo(__m512i c, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

__attribute__((target("avx512f"))) void philox_blocks_avx512(uint64_t key, uint64_t first, int64_t count,
                                                              uint32_t* words) {
  const __m512i m0 = splat(0xD2511F53u), m1 = splat(0xCD9E8D57u), w0 = splat(0x9E3779B9u), w1 = splat(0xBB67AE85u);
  const __m512i key0 = splat(static_cast<uint32_t>(key)), key1 = splat(static_cast<uint32_t>(key >> 32));
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t b = 0;
  for (; b + 16 <= count; b += 16) {
    // Counters first + b + 0..15: their low words in c0, high words in c1 (lane i: block b + i).
    const __m512i lo8 = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(first + b)), lanes);
    const __m512i hi8 = _mm512_add_epi64(lo8, _mm512_set1_epi64(8));
    __m512i c0 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo8)), _mm512_cvtepi64_epi32(hi8), 1);
    __m512i c1 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(lo8, 32))),
                                    _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi8, 32)), 1);
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512(), k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {  // philox4x32_rounds, 16 lanes at a time
      __m512i hi0, lo0, hi1, lo1;
      mul_hi_lo(c0, m0, hi0, lo0);
      mul_hi_lo(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, k0, 0x96);  // three-way xor
      c2 = _mm512_ternarylogic_epi32(hi0, c3, k1, 0x96);
      c1 = lo1;
      c3 = lo0;
      k0 = _mm512_add_epi32(k0, w0);
      k1 = _mm512_add_epi32(k1, w1);
    }
    // Lanes (c0..c3 of block i) to memory order (block i's 4 words, then block i + 1's): a 4 × 4
    // transpose inside each 128-bit lane, then one of the 128-bit lanes across the 4 registers.
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);  // blocks 4L, 4L + 1
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);  // 4L + 2, 4L + 3
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
    const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    _mm512_storeu_si512(words + 4 * b, _mm512_shuffle_i32x4(v0, v1, 0x88));
    _mm512_storeu_si512(words + 4 * b + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
    _mm512_storeu_si512(words + 4 * b + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
    _mm512_storeu_si512(words + 4 * b + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
  }
  if (b < count) philox_blocks_loop(key, first + static_cast<uint64_t>(b), count - b, words + 4 * b);
}

}  // namespace
#endif

void philox_blocks(uint64_t key, uint64_t first, int64_t count, uint32_t* words) {
#ifdef LOWRANK_PHILOX_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return philox_blocks_avx512(key, first, count, words);
#endif
  philox_blocks_loop(key, first, count, words);
}

}  // namespace lowrank::cpu
