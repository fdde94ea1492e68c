#pragma once
// e^x without a libm call, for the CPU attention's softmax and its backward and the loss's softmax
// rows: plain arithmetic that the compiler vectorises, rounding the same in every target clone. (Not for loops that divide by
// it: GCC then evaluates the clamped branch's quotient for every element, a denormal for SiLU's
// g / (1 + e^-g), and denormal arithmetic is slow; glibc's expf is as fast there.)
#include <cstdint>
#include <cstring>

namespace lowrank::cpu {

// e^x as Cephes' expf computes it: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial,
// times 2^n through the exponent bits. Plain arithmetic (no libm call), so loops over it vectorise
// and every clone rounds alike; within ~1 ulp of std::exp for x in [-87.3, 88.3] and clamped
// outside: FLT_MIN below (nothing next to a softmax's largest weight, 1), ~2.4e38 above instead of
// infinity. NaN stays NaN.
inline float exp_approx(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.37626f ? 88.37626f : x;
  // 1.5·2^23 + round(x / ln2) (ties to even): n sits in the low mantissa bits of `shifted`.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  // 2^n from those bits in unsigned arithmetic: no float-to-int conversion, which a NaN x would
  // make undefined (UBSan); NaN stays NaN through y.
  uint32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
  const uint32_t bits = (shifted_bits - 0x4B400000u + 127u) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return y * two_n;
}

}  // namespace lowrank::cpu
