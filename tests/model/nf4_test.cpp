// NF4 quantization (model/nf4.h): the code book, bnb's decision tree and packing order, hand-made
// blocks, double quantization of the absmax, round-trip error bounds; and, when the fixture made by
// tests/reference/make_nf4_fixtures.py exists, bitsandbytes' own codes and scales bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/nf4.h"
#include "test_paths.h"

using namespace lowrank;
using namespace lowrank::model;

namespace {

Tensor from(const std::vector<float>& v, const Shape& s) { return Tensor::from_vector(v, s); }

uint8_t code_at(const Nf4Weight& w, int64_t i) {
  const uint8_t byte = w.codes.data<uint8_t>()[i / 2];
  return i % 2 == 0 ? byte >> 4 : byte & 0x0F;
}

Tensor normal(const Shape& s, uint64_t seed, float scale) {
  Tensor t = Tensor::empty(s);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.normal() * scale;
  return t;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

}  // namespace

TEST(Nf4, CodeBookIsSortedSymmetricAroundAnExactZero) {
  const auto& c = nf4_code_book();
  EXPECT_EQ(c[0], -1.0f);
  EXPECT_EQ(c[7], 0.0f);
  EXPECT_EQ(c[15], 1.0f);
  for (int k = 0; k + 1 < 16; ++k) EXPECT_LT(c[k], c[k + 1]);
  // QLoRA's construction: 8 positive and 7 negative quantiles (the zero shared).
  EXPECT_NEAR(c[1], -0.6961928009986877, 1e-7);
  EXPECT_NEAR(c[14], 0.7229568362236023, 1e-7);
}

TEST(Nf4, DecisionTreePicksTheNearestCodeWithTiesDown) {
  const auto& c = nf4_code_book();
  for (int k = 0; k < 16; ++k) EXPECT_EQ(nf4_code_of(c[k]), k) << k;
  for (int k = 0; k + 1 < 16; ++k) {
    const float mid = 0.5f * (c[k] + c[k + 1]);
    // Just above the midpoint: the upper code; just below: the lower one.
    EXPECT_EQ(nf4_code_of(std::nextafter(mid, 2.0f) + 1e-6f), k + 1) << k;
    EXPECT_EQ(nf4_code_of(std::nextafter(mid, -2.0f) - 1e-6f), k) << k;
  }
  // bnb's thresholds are strict: exactly on one (as a float literal) stays below.
  EXPECT_EQ(nf4_code_of(0.03979014977812767f), 7);
  EXPECT_EQ(nf4_code_of(-0.8480964004993439f), 0);
  EXPECT_EQ(nf4_code_of(std::nanf("")), 0);  // a block of zeros: 0 · (1/0)
  EXPECT_EQ(nf4_code_of(1.5f), 15);
  EXPECT_EQ(nf4_code_of(-1.5f), 0);
}

TEST(Nf4, CountingThresholdsEqualsTheTree) {
  // Every float in [-1.25, 1.25] around each threshold, plus a sweep and the specials.
  const auto& c = nf4_code_book();
  std::vector<float> xs = {std::nanf(""), INFINITY, -INFINITY, 0.0f, -0.0f};
  for (int i = -200000; i <= 200000; ++i) xs.push_back(i * 6.25e-6f);
  for (int k = 0; k + 1 < 16; ++k) {
    float m = 0.5f * (c[k] + c[k + 1]);
    for (int j = 0; j < 64; ++j) m = std::nextafter(m, -2.0f);
    for (int j = 0; j < 128; ++j, m = std::nextafter(m, 2.0f)) xs.push_back(m);
  }
  for (float x : xs) ASSERT_EQ(nf4_code_of_fast(x), nf4_code_of(x)) << x;
}

TEST(Nf4, PacksTwoCodesPerByteHighNibbleFirst) {
  // One 64-block whose values are the code book times 2: absmax 2, every value exactly on a code.
  const auto& c = nf4_code_book();
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = 2.0f * c[(i * 5 + 3) % 16];
  const Nf4Weight w = nf4_quantize(from(v, {4, 16}), DType::F32, Device::cpu());
  ASSERT_EQ(w.codes.numel(), 32);
  ASSERT_EQ(w.blocks(), 1);
  for (int i = 0; i < 32; ++i) {
    const int hi = (2 * i * 5 + 3) % 16, lo = ((2 * i + 1) * 5 + 3) % 16;
    EXPECT_EQ(w.codes.data<uint8_t>()[i], hi << 4 | lo) << "byte " << i;
  }
  EXPECT_EQ(w.codes.data<uint8_t>()[0], 0x38);  // codes 3 and 8
  // One absmax: offset = absmax = 2, absmax - offset = 0 → absmax2 0, code of NaN (0 · inf) = 0,
  // dequantized -1 · 0 + 2 = 2 exactly.
  EXPECT_EQ(w.offset, 2.0f);
  EXPECT_EQ(w.absmax_scale.f32()[0], 0.0f);
  EXPECT_EQ(nf4_absmax(w)[0], 2.0f);
  const Tensor d = nf4_dequantize(w);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(d.f32()[i], v[i]) << i;
}

TEST(Nf4, HandComputedBlocksAndAnOddTail) {
  // Block 0: absmax 4 (element 1), values 1, -4, 0.5, 3 → normalized 0.25, -1, 0.125, 0.75 → codes
  // 10 (0.2461), 0, 9 (0.1609: 0.125 > 0.1203), 14 (0.7230; 0.75 < 0.8615); the rest 0 → 7.
  // Block 1: 3 elements (n = 67, odd): absmax 1, values -0.5, 0.1, 1 → codes 2 (-0.5251),
  // 8 (0.0796: 0.1 < 0.1203), 15; the missing 68th element pairs as a 0 → code 7.
  std::vector<float> v(67, 0.0f);
  v[0] = 1.0f, v[1] = -4.0f, v[2] = 0.5f, v[3] = 3.0f;
  v[64] = -0.5f, v[65] = 0.1f, v[66] = 1.0f;
  const Nf4Weight w = nf4_quantize(from(v, {1, 67}), DType::F32, Device::cpu());
  ASSERT_EQ(w.codes.numel(), 34);
  ASSERT_EQ(w.blocks(), 2);
  EXPECT_EQ(w.codes.data<uint8_t>()[0], 0xA0);
  EXPECT_EQ(w.codes.data<uint8_t>()[1], 0x9E);
  EXPECT_EQ(w.codes.data<uint8_t>()[2], 0x77);
  EXPECT_EQ(w.codes.data<uint8_t>()[32], 0x28);
  EXPECT_EQ(w.codes.data<uint8_t>()[33], 0xF7);
  // Double quantization: offset 2.5, absmax - offset = ±1.5: absmax2 1.5, codes of ±1 (the ends of
  // the dynamic map: 1 exactly, and its lowest value -0.99297 for -1).
  EXPECT_EQ(w.offset, 2.5f);
  EXPECT_EQ(w.absmax_scale.f32()[0], 1.5f);
  EXPECT_EQ(w.absmax_codes.data<uint8_t>()[0], 255);
  EXPECT_EQ(w.absmax_codes.data<uint8_t>()[1], 0);
  const auto a = nf4_absmax(w);
  EXPECT_EQ(a[0], 4.0f);
  const auto map = dynamic_map_signed();
  EXPECT_EQ(a[1], map[0] * 1.5f + 2.5f);
  EXPECT_NEAR(a[1], 1.0f, 0.011f);
  const Tensor d = nf4_dequantize(w);
  EXPECT_EQ(d.f32()[1], -4.0f);
  EXPECT_EQ(d.f32()[0], nf4_code_book()[10] * 4.0f);
  EXPECT_EQ(d.f32()[66], a[1]);
  EXPECT_EQ(d.f32()[4], 0.0f);
}

TEST(Nf4, DynamicMapIsBnbsSignedMap) {
  const auto map = dynamic_map_signed();
  for (int k = 0; k + 1 < 256; ++k) EXPECT_LT(map[k], map[k + 1]) << k;
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_NEAR(map[0], -0.99296875, 1e-6);  // -(mean of the last two points of linspace(0.1, 1, 65))
  EXPECT_EQ(map[127], 0.0f);                 // 127 negatives below the zero
  EXPECT_NEAR(map[128], 5.5e-7, 1e-12);      // the smallest positive: 10⁻⁶ · 0.55
  for (int k = 0; k < 256; ++k) EXPECT_EQ(dynamic_code_of(map, map[k]), k) << k;
  // Between two neighbours: the nearer one; above the midpoint the upper.
  for (int k = 0; k + 1 < 256; ++k) {
    const float mid = 0.5f * (map[k] + map[k + 1]);
    EXPECT_EQ(dynamic_code_of(map, std::nextafter(mid, 2.0f)), k + 1) << k;
    EXPECT_EQ(dynamic_code_of(map, std::nextafter(mid, -2.0f)), k) << k;
  }
  // bnb's construction in double: decade i holds the 2^i means of neighbouring points of
  // linspace(0.1, 1, 2^i + 1) times 10^(i - 6), both signs; then 0 and 1. torch's f32 values
  // are within a few ulps of it.
  std::vector<double> exact{0.0, 1.0};
  for (int i = 0; i < 7; ++i) {
    const int n = (1 << i) + 1;
    for (int k = 0; k + 1 < n; ++k) {
      const double mean = 0.1 + 0.9 * (k + 0.5) / (n - 1);
      exact.push_back(mean * std::pow(10.0, i - 6));
      exact.push_back(-mean * std::pow(10.0, i - 6));
    }
  }
  std::sort(exact.begin(), exact.end());
  ASSERT_EQ(exact.size(), 256u);
  for (int k = 0; k < 256; ++k) EXPECT_LE(std::fabs(map[k] - exact[k]), 4e-7 * std::fabs(exact[k])) << k;
}

TEST(Nf4, RoundTripErrorIsBoundedByTheCodeBookAndTheAbsmaxCode) {
  // [96, 200]: 300 blocks, 2 second-level blocks (the last partial), a row length not a multiple of 64.
  const Tensor x = normal({96, 200}, 3, 0.05f);
  const Nf4Weight w = nf4_quantize(x, DType::F32, Device::cpu());
  ASSERT_EQ(w.blocks(), 300);
  ASSERT_EQ(w.absmax_scale.numel(), 2);
  const Tensor d = nf4_dequantize(w);
  ASSERT_EQ(d.shape(), x.shape());
  const auto a = nf4_absmax(w);
  const auto& book = nf4_code_book();
  double max_gap = 0;  // the widest half-gap of the code book
  for (int k = 0; k + 1 < 16; ++k) max_gap = std::max(max_gap, 0.5 * (book[k + 1] - book[k]));
  double err2 = 0, ref2 = 0;
  for (int64_t b = 0; b < w.blocks(); ++b) {
    double true_absmax = 0;
    for (int64_t i = b * 64; i < (b + 1) * 64; ++i) true_absmax = std::max(true_absmax, std::fabs((double)x.f32()[i]));
    // The absmax code: the dynamic map's spacing near ±1 is 0.9/64 of the 256-block's absmax.
    const double scale = w.absmax_scale.f32()[b / 256];
    const double absmax_err = std::fabs(a[b] - true_absmax);
    EXPECT_LE(absmax_err, 0.5 * 0.9 / 64 * scale + 1e-7) << "block " << b;
    for (int64_t i = b * 64; i < (b + 1) * 64; ++i) {
      const double e = std::fabs((double)d.f32()[i] - x.f32()[i]);
      EXPECT_LE(e, max_gap * true_absmax + absmax_err + 1e-7) << "element " << i;
      // The element is decoded from its own code and the block's dequantized absmax.
      EXPECT_EQ(d.f32()[i], book[code_at(w, i)] * a[b]);
      err2 += e * e;
      ref2 += (double)x.f32()[i] * x.f32()[i];
    }
  }
  // NF4 on Gaussian weights: ~10% relative RMS error (QLoRA's 4-bit regime).
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_GT(rel, 0.05);
  EXPECT_LT(rel, 0.12);
  EXPECT_NEAR(w.offset, [&] { double s = 0; for (float v : a) s += v; return s / a.size(); }(), 2e-3);
  // ≈ 4.13 bits per parameter (+ the 1 KiB map).
  EXPECT_EQ(w.nbytes(), size_t(9600 + 300 + 2 * 4 + 256 * 4));
}

TEST(Nf4, ZeroWeightDequantizesToZero) {
  const Nf4Weight w = nf4_quantize(Tensor::zeros({2, 64}), DType::F32, Device::cpu());
  const Tensor d = nf4_dequantize(w);
  for (int64_t i = 0; i < d.numel(); ++i) EXPECT_EQ(d.f32()[i], 0.0f);
}

// bitsandbytes' own output for a few small matrices (tests/reference/make_nf4_fixtures.py, run on
// the GPU box; "source" in the metadata says whether bnb or the torch re-implementation made it).
TEST(Nf4, MatchesBitsandbytesFixture) {
  const std::string path = test::fixture("nf4/nf4.safetensors");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not made yet (tests/reference/make_nf4_fixtures.py)";
  io::SafetensorsFile f = io::SafetensorsFile::open(path);
  // The map first: it depends on the CPU torch ran on (vectorised linspace).
  const Tensor ref_map = f.get("dynamic_map").to(DType::F32);
  const auto map = dynamic_map_signed();
  for (int k = 0; k < 256; ++k) EXPECT_TRUE(same_bits(map[k], ref_map.f32()[k])) << "dynamic map value " << k;
  for (int c = 0; f.contains("case" + std::to_string(c) + ".weight"); ++c) {
    const std::string p = "case" + std::to_string(c) + ".";
    const Tensor weight = f.get(p + "weight");
    const Nf4Weight w = nf4_quantize(weight, DType::F32, Device::cpu());
    const Tensor codes = f.get(p + "codes"), absmax = f.get(p + "absmax").to(DType::F32);
    ASSERT_EQ(codes.numel(), w.codes.numel()) << p;
    int64_t bad = 0;
    for (int64_t i = 0; i < codes.numel(); ++i) bad += codes.data<uint8_t>()[i] != w.codes.data<uint8_t>()[i];
    EXPECT_EQ(bad, 0) << p << "packed codes that differ from bnb's";
    // First-level absmax (bnb with compress_statistics=False): exact.
    std::vector<float> ours(w.blocks());
    {
      const Tensor wf = weight.to(DType::F32);  // kept alive: x points into it
      const float* x = wf.f32();
      for (int64_t b = 0; b < w.blocks(); ++b) {
        float m = 0;
        for (int64_t i = b * 64; i < std::min(weight.numel(), (b + 1) * 64); ++i) m = std::fmax(m, std::fabs(x[i]));
        ours[b] = m;
      }
    }
    for (int64_t b = 0; b < w.blocks(); ++b) EXPECT_TRUE(same_bits(ours[b], absmax.f32()[b])) << p << "absmax " << b;
    // The offset is torch's CUDA mean (another summation order): within an ulp or two.
    const float offset = f.get(p + "offset").to(DType::F32).f32()[0];
    EXPECT_NEAR(w.offset, offset, 4 * std::fabs(offset) * 1.2e-7) << p;
    const Tensor qa = f.get(p + "absmax_codes"), scale = f.get(p + "absmax_scale").to(DType::F32);
    ASSERT_EQ(qa.numel(), w.absmax_codes.numel()) << p;
    int64_t bad_qa = 0;
    for (int64_t b = 0; b < qa.numel(); ++b) bad_qa += qa.data<uint8_t>()[b] != w.absmax_codes.data<uint8_t>()[b];
    EXPECT_EQ(bad_qa, 0) << p << "absmax codes that differ from bnb's";
    for (int64_t s = 0; s < scale.numel(); ++s)
      EXPECT_NEAR(w.absmax_scale.f32()[s], scale.f32()[s], 4 * scale.f32()[s] * 1.2e-7) << p << "absmax2 " << s;
    // bnb's dequantized weight (in the weight's dtype) from its own state, against ours from bnb's state.
    Nf4Weight theirs = w;
    theirs.codes = codes.clone();
    theirs.absmax_codes = qa.clone();
    theirs.absmax_scale = scale.clone();
    theirs.absmax_map = ref_map.clone();
    theirs.offset = offset;
    const Tensor deq = nf4_dequantize(theirs);
    const Tensor want = f.get(p + "dequantized");
    const Tensor got = deq.to(want.dtype()).to(DType::F32);
    const Tensor want32 = want.to(DType::F32);
    int64_t bad_d = 0;
    for (int64_t i = 0; i < got.numel(); ++i) bad_d += !same_bits(got.f32()[i], want32.f32()[i]);
    EXPECT_EQ(bad_d, 0) << p << "dequantized values that differ from bnb's";
  }
}
