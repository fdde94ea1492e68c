// CPU training ops: the AdamW element update, sum of squares for the global grad norm, clipping.
// They follow train/optimizer.cpp and train/grad_clip.cpp operation for operation.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {
namespace {
// torch.lerp's CPU formula: two forms so that weight 0 and 1 both give an endpoint exactly.
inline float lerp(float self, float end, float weight) {
  return std::abs(weight) < 0.5f ? self + weight * (end - self) : end - (end - self) * (1.0f - weight);
}
constexpr int64_t kBlock = 1 << 14;  // partial-sum block, as in grad_clip.cpp

double* scalar_f64(const Tensor& t, const char* what) {
  LR_CHECK(t.defined() && t.dtype() == DType::F64 && t.numel() == 1 && t.device().is_cpu(), what, " ",
           t.defined() ? t.str() : "undefined");
  return t.data<double>();
}
}  // namespace

void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s) {
  const int64_t n = param.numel();
  LR_CHECK(grad.numel() == n && exp_avg.numel() == n && exp_avg_sq.numel() == n, param.str(), " ", grad.str());
  float* p = param.f32();
  const float* g = grad.f32();
  float* m = exp_avg.f32();
  float* v = exp_avg_sq.f32();
#pragma omp parallel for schedule(static) if (n >= 32768)
  for (int64_t i = 0; i < n; ++i) {
    float pi = p[i];
    if (s.apply_decay) pi *= s.decay;
    const float gi = g[i];
    const float mi = lerp(m[i], gi, s.lerp_w);
    float vi = v[i] * s.beta2;
    vi = vi + s.one_minus_beta2 * gi * gi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = pi + s.neg_step * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

void sum_squares_(const Tensor& x, Tensor& acc) {
  double* out = scalar_f64(acc, "sum_squares_ acc");
  const float* g = x.f32();
  const int64_t n = x.numel();
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
  *out += total;
}

void clip_by_total_(Tensor& x, const Tensor& total_sumsq, double max_norm) {
  const double total = std::sqrt(*scalar_f64(total_sumsq, "clip_by_total_ total"));
  if (!std::isfinite(total)) return;
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) scale_(x, static_cast<float>(coef));
}

// The multi-tensor forms: the per-tensor ops in list order (one launch each costs nothing here).
void zero_all_(const std::vector<Tensor>& xs) {
  for (Tensor x : xs) x.zero_();
}

void sum_squares_all_(const std::vector<Tensor>& xs, Tensor& acc) {
  for (const Tensor& x : xs) sum_squares_(x, acc);
}

void clip_by_total_all_(const std::vector<Tensor>& xs, const Tensor& total_sumsq, double max_norm) {
  for (Tensor x : xs) clip_by_total_(x, total_sumsq, max_norm);
}

void adamw_update_all_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                       const std::vector<uint8_t>& decay, const AdamWScalars& s, const std::vector<Tensor>& working,
                       const std::vector<ColumnBlock>& also) {
  for (size_t i = 0; i < params.size(); ++i) {
    AdamWScalars si = s;
    si.apply_decay = s.apply_decay && decay[i];
    Tensor p = params[i], m = exp_avg[i], v = exp_avg_sq[i];
    adamw_update_(p, grads[i], m, v, si);
    if (!working.empty() && working[i].defined()) {
      Tensor w = working[i];
      if (w.numel() == p.numel()) {
        cast_into_(w, p);
      } else {  // a wider copy: p in its top-left block
        LR_CHECK(w.rank() == 2 && p.rank() == 2 && w.dim(0) >= p.dim(0) && w.dim(1) >= p.dim(1),
                 "adamw_update_all_: working copy ", w.str(), " for ", p.str());
        Tensor rows = w.slice_rows(0, p.dim(0));
        copy_columns_(rows, 0, cast(p, w.dtype()), 0, p.dim(1));
      }
    }
    if (!also.empty() && also[i].t.defined()) {
      Tensor rows = also[i].t.slice_rows(0, p.dim(0));
      copy_columns_(rows, also[i].col, cast(p, rows.dtype()), 0, p.dim(1));
    }
  }
}

}  // namespace lowrank::cpu
