#include "lowrank/train/grad_clip.h"

#include <cmath>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::train {
namespace {

// The gradients of `params`, checked: defined and f32.
std::vector<Tensor> grads_of(const std::vector<ParamRef>& params) {
  std::vector<Tensor> grads;
  for (const ParamRef& p : params) {
    if (!p.grad.defined()) throw error("gradient of parameter '", p.name, "' is undefined");
    if (p.grad.dtype() != DType::F32)
      throw error("gradient of parameter '", p.name, "' must be f32, got ", p.grad.str());
    grads.push_back(p.grad);
  }
  return grads;
}

// Σ g² over every gradient into one F64 [1] tensor on the gradients' device (fixed-order
// reduction in the ops: reproducible run to run).
Tensor sum_squares(const std::vector<ParamRef>& params) {
  const Device device = params.empty() ? Device::cpu() : params.front().grad.device();
  Tensor total = Tensor::zeros({1}, DType::F64, device);
  ops::sum_squares_all_(grads_of(params), total);
  return total;
}

double read_back(const Tensor& total) { return total.to(Device::cpu()).data<double>()[0]; }

}  // namespace

double global_grad_norm(const std::vector<ParamRef>& params) { return std::sqrt(read_back(sum_squares(params))); }

bool all_finite(const std::vector<ParamRef>& params) { return std::isfinite(read_back(sum_squares(params))); }

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(max_norm))
    throw error("max_grad_norm must be a positive number, got ", max_norm);
  Tensor total = sum_squares(params);
  const double norm = std::sqrt(read_back(total));
  if (std::isfinite(norm)) ops::clip_by_total_all_(grads_of(params), total, max_norm);  // torch's coef rule
  return norm;
}

}  // namespace lowrank::train
