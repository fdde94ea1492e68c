#include "lowrank/model/rope.h"

#include <algorithm>
#include <cmath>

namespace lowrank::model {
namespace {

// transformers computes these in float32; so do we, so that frequencies match bit for bit.
std::vector<double> default_inv_freq(double theta, int64_t dim) {
  std::vector<double> f(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    f[i] = static_cast<float>(1.0f / std::pow(static_cast<float>(theta), exponent));
  }
  return f;
}

void apply_llama3(std::vector<double>& inv, const RopeConfig& r) {
  const double old_ctx = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_ctx / r.low_freq_factor;
  const double high_wavelen = old_ctx / r.high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2 * M_PI / f;
    if (wavelen > low_wavelen) {
      f = f / r.factor;
    } else if (wavelen >= high_wavelen) {  // medium band: smooth interpolation
      const double smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      f = (1 - smooth) * f / r.factor + smooth * f;
    }
  }
}

double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

RopeFrequencies yarn(const ModelConfig& c, const RopeConfig& r) {
  const double base = r.theta;
  const int64_t dim = c.rotary_dim();
  const double factor = r.factor;
  const double orig = r.original_max_position_embeddings > 0 ? static_cast<double>(r.original_max_position_embeddings)
                                                             : static_cast<double>(c.max_position_embeddings);
  RopeFrequencies out;
  if (r.attention_factor) out.attention_scaling = *r.attention_factor;
  else if (r.mscale && r.mscale_all_dim && *r.mscale && *r.mscale_all_dim)
    out.attention_scaling = yarn_mscale(factor, *r.mscale) / yarn_mscale(factor, *r.mscale_all_dim);
  else out.attention_scaling = yarn_mscale(factor, 1.0);
  const double beta_fast = r.beta_fast.value_or(32.0), beta_slow = r.beta_slow.value_or(1.0);
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = correction_dim(beta_fast), high = correction_dim(beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  out.inv_freq.resize(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    float pos_freq = std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(dim));
    float extrapolation = 1.0f / pos_freq;
    float interpolation = 1.0f / (static_cast<float>(factor) * pos_freq);
    float ramp = std::clamp(static_cast<float>((i - low) / (high - low)), 0.0f, 1.0f);
    float extrapolation_factor = 1.0f - ramp;
    out.inv_freq[i] = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return out;
}

// LongRoPE (Phi-3): every frequency divided by its own factor, the short set up to
// original_max_position_embeddings and the long set beyond; cos and sin scaled by
// sqrt(1 + ln(s) / ln(original)) with s = max_position_embeddings / original unless set.
RopeFrequencies longrope(const ModelConfig& c, const RopeConfig& r, bool long_factors) {
  const int64_t dim = c.rotary_dim();
  const double orig = static_cast<double>(r.original_max_position_embeddings);
  const double factor = r.factor > 0 ? r.factor : static_cast<double>(c.max_position_embeddings) / orig;
  RopeFrequencies out;
  if (r.attention_factor) out.attention_scaling = *r.attention_factor;
  else out.attention_scaling = factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(orig));
  const std::vector<double>& ext = long_factors ? r.long_factor : r.short_factor;
  out.inv_freq.resize(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {  // float32 throughout, as transformers
    const float shape = static_cast<float>(2 * i) / static_cast<float>(dim);
    out.inv_freq[i] = 1.0f / (static_cast<float>(ext[i]) * std::pow(static_cast<float>(r.theta), shape));
  }
  return out;
}

}  // namespace

RopeFrequencies rope_frequencies(const ModelConfig& c) { return rope_frequencies(c, c.rope); }

RopeFrequencies rope_frequencies(const ModelConfig& c, const RopeConfig& r, bool long_factors) {
  if (r.type == "yarn") return yarn(c, r);
  if (r.type == "longrope") return longrope(c, r, long_factors);
  RopeFrequencies out;
  out.inv_freq = default_inv_freq(r.theta, c.rotary_dim());
  if (r.type == "linear") {
    for (double& f : out.inv_freq) f /= r.factor;
  } else if (r.type == "llama3") {
    apply_llama3(out.inv_freq, r);
  }
  return out;
}

bool uses_long_factors(const RopeConfig& r, int64_t seq_len) {
  return r.type == "longrope" && seq_len > r.original_max_position_embeddings;
}

RopeTables rope_tables(const RopeFrequencies& f, int64_t n_positions) {
  const int64_t half = static_cast<int64_t>(f.inv_freq.size());
  RopeTables t{Tensor::empty({n_positions, half}), Tensor::empty({n_positions, half})};
  float* cs = t.cos.f32();
  float* sn = t.sin.f32();
  for (int64_t p = 0; p < n_positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      // float32 angle, as transformers forms position * inv_freq in float32
      float angle = static_cast<float>(p) * static_cast<float>(f.inv_freq[i]);
      cs[p * half + i] = static_cast<float>(std::cos(angle) * f.attention_scaling);
      sn[p * half + i] = static_cast<float>(std::sin(angle) * f.attention_scaling);
    }
  return t;
}

}  // namespace lowrank::model
