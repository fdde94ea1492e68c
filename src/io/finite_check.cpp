#include "lowrank/io/finite_check.h"

#include <cstdint>

#include "lowrank/core/error.h"

namespace lowrank::io {
namespace {

// The first of `n` floats stored as `Bits` whose exponent bits are all set (NaN or inf), or -1.
// One branch-free pass to find out whether there is one (it vectorises), then a search.
template <typename Bits>
int64_t first_non_finite(const Bits* v, int64_t n, Bits exponent) {
  Bits any = 0;
  for (int64_t i = 0; i < n; ++i) any |= static_cast<Bits>((v[i] & exponent) == exponent);
  if (!any) return -1;
  for (int64_t i = 0; i < n; ++i)
    if ((v[i] & exponent) == exponent) return i;
  return -1;
}

// first_non_finite over t's storage; `nan`: whether that element is a NaN (mantissa not zero).
template <typename Bits>
int64_t find(const Tensor& t, Bits exponent, Bits mantissa, bool& nan) {
  const auto* v = static_cast<const Bits*>(t.raw());
  const int64_t bad = first_non_finite<Bits>(v, t.numel(), exponent);
  nan = bad >= 0 && (v[bad] & mantissa) != 0;
  return bad;
}

}  // namespace

void check_finite(const Tensor& host, const std::string& file, const std::string& name, bool converted) {
  LR_CHECK(host.device().is_cpu(), "check_finite: a CPU tensor expected, got ", host.str());
  bool nan = false;
  int64_t bad = -1;
  switch (host.dtype()) {
    case DType::F32: bad = find<uint32_t>(host, 0x7F800000u, 0x007FFFFFu, nan); break;
    case DType::BF16: bad = find<uint16_t>(host, 0x7F80u, 0x007Fu, nan); break;
    case DType::F16: bad = find<uint16_t>(host, 0x7C00u, 0x03FFu, nan); break;
    default: break;
  }
  if (bad >= 0)
    throw error(file, ": tensor \"", name, "\" holds ", nan ? "NaN" : "inf",
                converted ? " as " + std::string(dtype_name(host.dtype())) : std::string(), " (element ", bad, ")");
}

}  // namespace lowrank::io
