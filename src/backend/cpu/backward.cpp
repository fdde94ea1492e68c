// CPU backward ops: exact gradients of the forward ops in elementwise.cpp (attention's:
// attention_backward.cpp).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/cross_entropy_rows.h"

namespace lowrank::cpu {

namespace {
// The residual stream's gradient added to a norm's dx (null: none).
const float* residual_grad(const Tensor* dres, const Tensor& x, const char* op) {
  if (!dres) return nullptr;
  LR_CHECK(dres->dtype() == DType::F32 && dres->numel() == x.numel(), op, ": dres ", dres->str(), " for x ", x.str());
  return dres->f32();
}
}  // namespace

Tensor rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor* dw,
                        const Tensor* dres, const Tensor* into) {
  const int64_t d = w.numel(), rows = x.numel() / d;
  auto first_columns = [&](const Tensor& t) {
    Tensor first = Tensor::empty({rows, d});
    copy_columns_(first, 0, t, 0, d);
    return first;
  };
  if (dy.numel() != x.numel()) return rmsnorm_backward(first_columns(dy), x, w, rstd, dw, dres, into);  // a wider dy
  if (dres && dres->numel() != x.numel()) {  // a wider dres
    const Tensor res = first_columns(*dres);
    return rmsnorm_backward(dy, x, w, rstd, dw, &res, into);
  }
  if (into) {  // dx into the first d columns of a wider tensor
    Tensor out = *into;
    copy_columns_(out, 0, rmsnorm_backward(dy, x, w, rstd, dw, dres).reshape({rows, d}), 0, d);
    return out;
  }
  Tensor dx = Tensor::empty(x.shape());
  const float *dyp = dy.f32(), *xp = x.f32(), *wp = w.f32(), *rp = rstd.f32();
  const float* res = residual_grad(dres, x, "rmsnorm_backward");
  float* dxp = dx.f32();
#pragma omp parallel for if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    const float* gr = dyp + r * d;
    double dot = 0;  // Σ dy·w·x
    for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(gr[i]) * wp[i] * xr[i];
    const float rs = rp[r];
    const float c = static_cast<float>(dot / d) * rs * rs * rs;
    for (int64_t i = 0; i < d; ++i) dxp[r * d + i] = (rs * gr[i] * wp[i] - c * xr[i]) + (res ? res[r * d + i] : 0.0f);
  }
  if (dw && dw->defined()) {
    float* g = dw->f32();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < d; ++i) g[i] += dyp[r * d + i] * xp[r * d + i] * rp[r];
  }
  return dx;
}

Tensor layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          Tensor* dw, Tensor* db, const Tensor* dres) {
  const int64_t d = w.numel(), rows = x.numel() / d;
  Tensor dx = Tensor::empty(x.shape());
  const float* res = residual_grad(dres, x, "layernorm_backward");
  const float *dyp = dy.f32(), *xp = x.f32(), *wp = w.f32(), *mp = mean.f32(), *rp = rstd.f32();
  float* dxp = dx.f32();
#pragma omp parallel for if (rows * d > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    double s1 = 0, s2 = 0;  // Σ dx̂, Σ dx̂·x̂
    for (int64_t i = 0; i < d; ++i) {
      const double xhat = (xp[r * d + i] - mp[r]) * rp[r];
      const double g = static_cast<double>(dyp[r * d + i]) * wp[i];
      s1 += g;
      s2 += g * xhat;
    }
    s1 /= d;
    s2 /= d;
    for (int64_t i = 0; i < d; ++i) {
      const double xhat = (xp[r * d + i] - mp[r]) * rp[r];
      const double g = static_cast<double>(dyp[r * d + i]) * wp[i];
      dxp[r * d + i] = static_cast<float>(rp[r] * (g - s1 - xhat * s2)) + (res ? res[r * d + i] : 0.0f);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < d; ++i) {
      const float xhat = (xp[r * d + i] - mp[r]) * rp[r];
      if (dw && dw->defined()) dw->f32()[i] += dyp[r * d + i] * xhat;
      if (db && db->defined()) db->f32()[i] += dyp[r * d + i];
    }
  return dx;
}

Tensor activation_backward(const Tensor& dy, const Tensor& x, Act a) {
  Tensor dx = Tensor::empty(x.shape());
  const float *g = dy.f32(), *xp = x.f32();
  float* o = dx.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float v = xp[i];
    float d = 0;
    switch (a) {
      case Act::SiLU: {
        const float sg = 1.0f / (1.0f + std::exp(-v));
        d = sg * (1.0f + v * (1.0f - sg));
        break;
      }
      case Act::GeluTanh: {
        const float k = 0.7978845608028654f;
        const float u = k * (v + 0.044715f * v * v * v);
        const float t = std::tanh(u);
        d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * v * v);
        break;
      }
      case Act::GeluErf:
        d = 0.5f * (1.0f + std::erf(v * 0.7071067811865476f)) + v * 0.3989422804014327f * std::exp(-0.5f * v * v);
        break;
      case Act::ReLU: d = v > 0 ? 1.0f : 0.0f; break;
    }
    o[i] = g[i] * d;
  }
  return dx;
}

void swiglu_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  dg = Tensor::empty(g.shape());
  du = Tensor::empty(u.shape());
  const float *d = dy.f32(), *gp = g.f32(), *up = u.f32();
  float *dgp = dg.f32(), *dup = du.f32();
  const int64_t n = g.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float sg = 1.0f / (1.0f + std::exp(-gp[i]));
    const float silu = gp[i] * sg;
    dup[i] = d[i] * silu;
    dgp[i] = d[i] * up[i] * sg * (1.0f + gp[i] * (1.0f - sg));
  }
}

void bias_grad_(Tensor& db, const Tensor& dy) {
  const int64_t n = dy.dim(0), m = dy.dim(1);
  float* o = db.f32();
  const float* g = dy.f32();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < m; ++i) o[i] += g[r * m + i];
}

void embedding_backward_(Tensor& table_grad, const std::vector<int32_t>& ids, const Tensor& dy) {
  const int64_t d = table_grad.dim(1);
  float* o = table_grad.f32();
  const float* g = dy.f32();
  for (size_t r = 0; r < ids.size(); ++r)
    for (int64_t i = 0; i < d; ++i) o[ids[r] * d + i] += g[r * d + i];
}

double cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets, float scale,
                              Tensor& dlogits) {
  const int64_t n = logits.dim(0), V = logits.dim(1);
  const float* lp = logits.f32();
  float* dp = dlogits.f32();
  LR_CHECK(static_cast<int64_t>(targets.size()) == n, logits.str(), " vs ", targets.size(), " targets");
  for (const int32_t t : targets)  // before the parallel loop: exceptions must not leave it
    if (t != -100 && (t < 0 || t >= V)) throw error("target ", t, " is outside the vocabulary [0, ", V, ")");
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (n * V > 65536)
  for (int64_t r = 0; r < n; ++r) {
    float* dr = dp + r * V;
    const int32_t t = targets[r];
    if (t == -100) continue;
    const float* row = lp + r * V;
    const float mx = row_max(row, V);
    const double sum = row_exp_sum(row, V, mx);
    row_scaled_exp(row, dr, V, mx, static_cast<float>(scale / sum), true);  // += scale · softmax
    dr[t] -= scale;
    total += std::log(sum) + mx - row[t];
  }
  return total;
}

}  // namespace lowrank::cpu
