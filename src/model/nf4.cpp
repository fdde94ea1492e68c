// NF4 quantization as bitsandbytes does it (lowrank/model/nf4.h describes the format). Every
// rounding step is the one bnb's kernels take (x · (1/absmax), not x / absmax; the absmax
// dequantized in two steps), and this file is built with -ffp-contract=off, so that the codes and
// scales agree bit for bit with bnb's (tests/reference/make_nf4_fixtures.py checks them).
#include "lowrank/model/nf4.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "lowrank/backend/nf4_code.h"
#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {
namespace {

// bnb's tree as a count: with strict ">" at every node of a tree over sorted thresholds, the code
// is the number of thresholds below x (NaN: none). Branch-free, so the compiler vectorises it:
// the tree's unpredictable branches made quantizing an 8B model take minutes.
constexpr float kNf4Thresholds[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

inline uint8_t nf4_code_by_count(float x) {
  int code = 0;
  for (float t : kNf4Thresholds) code += x > t;
  return static_cast<uint8_t>(code);
}

}  // namespace

uint8_t nf4_code_of_fast(float normalized) { return nf4_code_by_count(normalized); }

int64_t Nf4Weight::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Nf4Weight Nf4Weight::to(Device device) const {
  Nf4Weight w = *this;
  w.codes = codes.to(device);
  w.absmax_codes = absmax_codes.to(device);
  w.absmax_scale = absmax_scale.to(device);
  w.absmax_map = absmax_map.to(device);
  return w;
}

size_t Nf4Weight::nbytes() const {
  return codes.nbytes() + absmax_codes.nbytes() + absmax_scale.nbytes() + absmax_map.nbytes();
}

const std::array<float, 16>& nf4_code_book() {
  static const std::array<float, 16> book = {LOWRANK_NF4_CODE_BOOK};
  return book;
}

uint8_t nf4_code_of(float x) {
  // Midpoints between neighbouring code book values, searched as a balanced tree (bnb's
  // dQuantizeNF4): a value above a midpoint takes the upper code.
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

// create_dynamic_map(signed=True) as torch 2.11 computes it on the GPU box's CPU (bit patterns,
// written by tests/reference/make_nf4_fixtures.py). Computed here instead, about 40 of the 256
// values would differ by an ulp: torch's vectorised f32 linspace rounds in its own order (and the
// map bnb stores depends on the machine torch ran on).
constexpr uint32_t kTorchDynamicMapBits[256] = {
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
    0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u,
    0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u,
    0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au,
    0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au,
    0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu,
    0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u,
    0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5du, 0xbd670a3du,
    0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u,
    0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
    0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du,
    0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u,
    0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu,
    0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u,
    0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u,
    0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
    0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
    0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
    0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u,
    0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
    0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u,
    0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u,
    0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, 0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
};

std::array<float, 256> dynamic_map_signed() {
  std::array<float, 256> map;
  std::memcpy(map.data(), kTorchDynamicMapBits, sizeof(map));
  return map;
}

uint8_t dynamic_code_of(const std::array<float, 256>& map, float x) {
  // bnb's dQuantize (non-stochastic): 7 halvings from the middle, tracking the neighbours below
  // and above; then the nearer of pivot and that neighbour by their midpoint.
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = map[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = map[pivot];
  }
  if (upper_pivot == 255) upper = map[upper_pivot];
  if (lower_pivot == 0) lower = map[lower_pivot];
  if (x > val) return static_cast<uint8_t>(x > (upper + val) * 0.5f ? upper_pivot : pivot);
  return static_cast<uint8_t>(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

Nf4Weight nf4_quantize(const Tensor& weight, DType dtype, Device device) {
  LR_CHECK(weight.rank() == 2, "nf4_quantize: a 2-D weight, got ", weight.str());
  const Tensor w = weight.to(Device::cpu()).to(DType::F32);
  const float* x = w.f32();
  Nf4Weight q;
  q.shape = w.shape();
  q.dtype = dtype;
  const int64_t n = w.numel(), blocks = q.blocks();
  const int64_t blocks2 = (blocks + kAbsmaxBlockSize - 1) / kAbsmaxBlockSize;

  // First level: per 64 elements, absmax and 4-bit codes. A block of zeros has 1/absmax = inf and
  // 0 · inf = NaN: every code 0 and absmax 0, as in bnb. An odd last element pairs with a 0.
  std::vector<float> absmax(blocks);
  q.codes = Tensor::empty({(n + 1) / 2}, DType::U8);
  uint8_t* codes = q.codes.data<uint8_t>();
#pragma omp parallel for if (n > 65536)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kNf4BlockSize, end = std::min(n, begin + kNf4BlockSize);
    float m = -FLT_MAX;  // never NaN, so this is fmaxf(m, |x|) (a NaN weight is skipped, as by fmaxf)
    for (int64_t i = begin; i < end; ++i) m = std::fabs(x[i]) > m ? std::fabs(x[i]) : m;
    absmax[b] = m;
    const float inv = 1.0f / m;
    const int64_t len = end - begin;
    float v[kNf4BlockSize];  // a partial block's missing elements are 0 (bnb loads 0), times inv too
    for (int64_t j = 0; j < kNf4BlockSize; ++j) v[j] = (j < len ? x[begin + j] : 0.0f) * inv;
    uint8_t c[kNf4BlockSize];
    for (int j = 0; j < kNf4BlockSize; ++j) c[j] = nf4_code_by_count(v[j]);
    for (int64_t i = begin; i < end; i += 2) codes[i / 2] = static_cast<uint8_t>(c[i - begin] << 4 | c[i - begin + 1]);
  }

  // Second level: absmax - mean, per 256 values, against the signed dynamic map. torch's mean is
  // a float reduction whose order we cannot reproduce; the double sum rounded once is within an ulp.
  double sum = 0.0;
  for (float a : absmax) sum += a;
  q.offset = static_cast<float>(sum / static_cast<double>(blocks));
  const std::array<float, 256> map = dynamic_map_signed();
  q.absmax_codes = Tensor::empty({blocks}, DType::U8);
  q.absmax_scale = Tensor::empty({blocks2});
  q.absmax_map = Tensor::empty({256});
  std::copy(map.begin(), map.end(), q.absmax_map.f32());
  uint8_t* acodes = q.absmax_codes.data<uint8_t>();
  for (int64_t c = 0; c < blocks2; ++c) {
    const int64_t begin = c * kAbsmaxBlockSize, end = std::min(blocks, begin + kAbsmaxBlockSize);
    float m = -FLT_MAX;
    for (int64_t b = begin; b < end; ++b) m = std::fmax(m, std::fabs(absmax[b] - q.offset));
    q.absmax_scale.f32()[c] = m;
    const float inv = 1.0f / m;
    for (int64_t b = begin; b < end; ++b) acodes[b] = dynamic_code_of(map, (absmax[b] - q.offset) * inv);
  }
  return device.is_cpu() ? q : q.to(device);
}

std::vector<float> nf4_absmax(const Nf4Weight& w) {
  const Nf4Weight h = w.device().is_cpu() ? w : w.to(Device::cpu());
  std::vector<float> out(h.blocks());
  for (int64_t b = 0; b < h.blocks(); ++b) {
    const float scaled = h.absmax_map.f32()[h.absmax_codes.data<uint8_t>()[b]] * h.absmax_scale.f32()[b / kAbsmaxBlockSize];
    out[b] = scaled + h.offset;
  }
  return out;
}

Tensor nf4_dequantize(const Nf4Weight& w) {
  LR_CHECK(w.defined(), "nf4_dequantize of an empty weight");
  Tensor out = Tensor::empty(w.shape, w.dtype, w.device());
  ops::nf4_dequantize(w.codes, w.absmax_codes, w.absmax_scale, w.absmax_map, w.offset, out);
  return out;
}

}  // namespace lowrank::model
