#include "lowrank/train/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lowrank/core/error.h"

namespace lowrank::train {
namespace {

constexpr int64_t kBlock = 1 << 14;  // elements per partial sum; fixed so sums are reproducible

const float* grad_data(const ParamRef& p) {
  if (!p.grad.defined()) throw error("gradient of parameter '", p.name, "' is undefined");
  if (p.grad.dtype() != DType::F32 || !p.grad.device().is_cpu())
    throw error("gradient of parameter '", p.name, "' must be f32 on the cpu, got ", p.grad.str());
  return p.grad.f32();
}

// Sum of squares of one tensor: per-block sums in parallel, then added in block order.
double sum_of_squares(const float* g, int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kBlock);
    double s = 0.0;
    for (int64_t i = b * kBlock; i < end; ++i) s += static_cast<double>(g[i]) * g[i];
    partial[static_cast<size_t>(b)] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace

double global_grad_norm(const std::vector<ParamRef>& params) {
  double total = 0.0;
  for (const ParamRef& p : params) total += sum_of_squares(grad_data(p), p.grad.numel());
  return std::sqrt(total);
}

bool all_finite(const std::vector<ParamRef>& params) {
  for (const ParamRef& p : params) {
    const float* g = grad_data(p);
    const int64_t n = p.grad.numel();
    bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) if (n >= kBlock)
    for (int64_t i = 0; i < n; ++i) ok = ok && std::isfinite(g[i]);
    if (!ok) return false;
  }
  return true;
}

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm) {
  if (!(max_norm > 0.0) || !std::isfinite(max_norm))
    throw error("max_grad_norm must be a positive number, got ", max_norm);
  const double total = global_grad_norm(params);
  if (!std::isfinite(total)) return total;
  const double coef = max_norm / (total + 1e-6);  // torch's clip_coef
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);  // torch multiplies f32 grads by an f32 coef
    for (ParamRef& p : params) {
      float* g = p.grad.f32();
      const int64_t n = p.grad.numel();
#pragma omp parallel for schedule(static) if (n >= kBlock)
      for (int64_t i = 0; i < n; ++i) g[i] *= c;
    }
  }
  return total;
}

}  // namespace lowrank::train
