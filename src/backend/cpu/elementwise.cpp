// CPU element-wise ops, norms, embeddings and activations (f32, OpenMP).
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/cross_entropy_rows.h"

namespace lowrank::cpu {

Tensor transpose2d(const Tensor& x) {
  LR_CHECK(x.rank() == 2 && x.device().is_cpu(), x.str());
  const int64_t r = x.dim(0), c = x.dim(1);
  Tensor t = Tensor::empty({c, r}, x.dtype());
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(t.raw());
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) std::memcpy(dst + (j * r + i) * es, src + (i * c + j) * es, es);
  return t;
}

void add_(Tensor& y, const Tensor& x) { add_scaled_(y, x, 1.0f); }

void add_scaled_(Tensor& y, const Tensor& x, float s) {
  LR_CHECK(y.numel() == x.numel(), y.str(), " += ", x.str());
  float* a = y.f32();
  const float* b = x.f32();
  const int64_t n = y.numel();
#pragma omp parallel for simd if (n > 32768)
  for (int64_t i = 0; i < n; ++i) a[i] += s * b[i];
}

void add_bias_(Tensor& y, const Tensor& b) {
  const int64_t rows = y.dim(0), n = y.dim(1);
  LR_CHECK(b.numel() == n, y.str(), " + bias ", b.str());
  float* a = y.f32();
  const float* bb = b.f32();
#pragma omp parallel for if (rows * n > 32768)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) a[r * n + i] += bb[i];
}

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids) {
  const int64_t V = table.dim(0), d = table.dim(1);
  Tensor out = Tensor::empty({static_cast<int64_t>(ids.size()), d});
  const float* t = table.f32();
  float* o = out.f32();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) throw error("token id ", ids[i], " is outside the vocabulary [0, ", V, ")");
    std::memcpy(o + i * d, t + static_cast<int64_t>(ids[i]) * d, d * sizeof(float));
  }
  return out;
}

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor* rstd_out, const ColumnBlock* into) {
  const int64_t d = w.numel();
  LR_CHECK(x.numel() % d == 0, x.str(), " rmsnorm ", w.str());
  const int64_t rows = x.numel() / d;
  Tensor y = Tensor::empty(x.shape());
  Tensor rstd = Tensor::empty({rows});
  const float* xp = x.f32();
  const float* wp = w.f32();
  float* yp = y.f32();
  float* rp = rstd.f32();
#pragma omp parallel for if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float rs = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    rp[r] = rs;
    for (int64_t i = 0; i < d; ++i) yp[r * d + i] = xr[i] * rs * wp[i];
  }
  if (rstd_out) *rstd_out = rstd;
  if (!into) return y;
  Tensor dst = into->t;
  copy_columns_(dst, into->col, y.reshape({rows, d}), 0, d);
  return dst;
}

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor* mean_out, Tensor* rstd_out) {
  const int64_t d = w.numel();
  const int64_t rows = x.numel() / d;
  Tensor y = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
  const float* xp = x.f32();
  const float* wp = w.f32();
  const float* bp = b.defined() ? b.f32() : nullptr;
  float* yp = y.f32();
#pragma omp parallel for if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += xr[i];
    const double mu = s / d;
    double var = 0;
    for (int64_t i = 0; i < d; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    const float rs = static_cast<float>(1.0 / std::sqrt(var / d + eps));
    mean.f32()[r] = static_cast<float>(mu);
    rstd.f32()[r] = rs;
    for (int64_t i = 0; i < d; ++i)
      yp[r * d + i] = (xr[i] - static_cast<float>(mu)) * rs * wp[i] + (bp ? bp[i] : 0.0f);
  }
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse) {
  const int64_t n = x.dim(0);
  const int64_t hd = x.dim(1) / heads;
  const int64_t half = cos.dim(1);  // rotated pairs per head: hd / 2, fewer with partial rotary
  LR_CHECK(static_cast<int64_t>(pos.size()) == n && 2 * half <= hd, x.str(), " rope ", cos.str());
  float* xp = x.f32();
  const float* cp = cos.f32();
  const float* sp = sin.f32();
  const float sign = inverse ? -1.0f : 1.0f;  // inverse rotation = transpose (for backward)
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  for (int64_t t = 0; t < n; ++t)
    LR_CHECK(pos[t] >= 0 && pos[t] < cos.dim(0), "position ", pos[t], " beyond rope table ", cos.dim(0));
#pragma omp parallel for if (n * heads * hd > 32768)
  for (int64_t t = 0; t < n; ++t) {
    const float* c = cp + pos[t] * half;
    const float* s = sp + pos[t] * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = xp + t * heads * hd + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - sign * b * s[i];
        v[i + half] = b * c[i] + sign * a * s[i];
      }
    }
  }
}

Tensor activation(const Tensor& x, Act a) {
  Tensor y = Tensor::empty(x.shape());
  const float* xp = x.f32();
  float* yp = y.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float v = xp[i];
    switch (a) {
      case Act::SiLU: yp[i] = v / (1.0f + std::exp(-v)); break;
      case Act::GeluTanh: {
        const float k = 0.7978845608028654f;  // sqrt(2/pi)
        yp[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
        break;
      }
      case Act::GeluErf: yp[i] = 0.5f * v * (1.0f + std::erf(v * 0.7071067811865476f)); break;
      case Act::ReLU: yp[i] = v > 0 ? v : 0.0f; break;
    }
  }
  return y;
}

Tensor swiglu(const Tensor& g, const Tensor& u) {
  LR_CHECK(g.numel() == u.numel(), g.str(), " swiglu ", u.str());
  Tensor y = Tensor::empty(g.shape());
  const float* gp = g.f32();
  const float* up = u.f32();
  float* yp = y.f32();
  const int64_t n = g.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) yp[i] = gp[i] / (1.0f + std::exp(-gp[i])) * up[i];
  return y;
}

double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t* count) {
  const int64_t n = logits.dim(0), V = logits.dim(1);
  LR_CHECK(static_cast<int64_t>(targets.size()) == n, logits.str(), " vs ", targets.size(), " targets");
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  for (const int32_t t : targets)
    if (t != -100 && (t < 0 || t >= V)) throw error("target ", t, " is outside the vocabulary [0, ", V, ")");
  const float* lp = logits.f32();
  double total = 0;
  int64_t counted = 0;
#pragma omp parallel for reduction(+ : total, counted) if (n * V > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const int32_t t = targets[r];
    if (t == -100) continue;
    const float* row = lp + r * V;
    const float mx = row_max(row, V);
    total += std::log(row_exp_sum(row, V, mx)) + mx - row[t];
    ++counted;
  }
  if (count) *count = counted;
  return total;
}

}  // namespace lowrank::cpu
