// Fused cross-entropy forward + backward for one chunk of logits rows (CPU reference of the CUDA
// kernel). In place is allowed: each row's statistics are read before the row is overwritten.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/cross_entropy_rows.h"

namespace lowrank::cpu {

void cross_entropy_chunk(const Tensor& logits, const Tensor& targets, float scale, Tensor& dlogits,
                         Tensor& loss_sum, const Tensor& device_scale) {
  if (device_scale.defined()) scale = device_scale.f32()[0];
  const int64_t n = logits.dim(0), V = logits.dim(1);
  LR_CHECK(targets.dtype() == DType::I32 && targets.numel() == n && targets.device().is_cpu(), "targets ",
           targets.str(), " for logits ", logits.str());
  LR_CHECK(loss_sum.dtype() == DType::F64 && loss_sum.numel() == 1 && loss_sum.device().is_cpu(), "loss_sum ",
           loss_sum.defined() ? loss_sum.str() : "undefined");
  if (!dlogits.defined() || dlogits.shape() != logits.shape()) dlogits = Tensor::empty(logits.shape());
  const float* lp = logits.f32();
  float* dp = dlogits.f32();
  const int32_t* tp = targets.data<int32_t>();
  // Checked before the parallel loop: an exception must not leave an OpenMP region.
  for (int64_t r = 0; r < n; ++r)
    if (tp[r] != -100 && (tp[r] < 0 || tp[r] >= V))
      throw error("target ", tp[r], " is outside the vocabulary [0, ", V, ")");
  double total = 0;
#pragma omp parallel for reduction(+ : total) if (n * V > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* row = lp + r * V;
    float* dr = dp + r * V;
    const int32_t t = tp[r];
    if (t == -100) {
      std::memset(dr, 0, V * sizeof(float));
      continue;
    }
    const float mx = row_max(row, V);
    const double sum = row_exp_sum(row, V, mx);
    total += std::log(sum) + mx - row[t];
    row_scaled_exp(row, dr, V, mx, static_cast<float>(scale / sum), false);  // scale · softmax
    dr[t] -= scale;
  }
  loss_sum.data<double>()[0] += total;
}

}  // namespace lowrank::cpu
