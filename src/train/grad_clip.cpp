#include "lowrank/train/grad_clip.h"

#include <algorithm>
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

// Σ g² over every gradient into one F64 [1] tensor per device group (fixed-order reduction in the
// ops: reproducible run to run).
std::vector<Tensor> sum_squares(const std::vector<std::vector<Tensor>>& groups) {
  std::vector<Tensor> totals;
  for (const auto& grads : groups) {
    totals.push_back(Tensor::zeros({1}, DType::F64, grads.front().device()));
    ops::sum_squares_all_(grads, totals.back());
  }
  return totals;
}

// The sum over the groups, read on the host (group by group: the reads wait for each device).
double read_back(const std::vector<Tensor>& totals) {
  double sum = 0;
  for (const Tensor& t : totals) sum += t.to(Device::cpu()).data<double>()[0];
  return sum;
}

}  // namespace

std::vector<std::vector<Tensor>> grads_by_device(const std::vector<ParamRef>& params) {
  std::vector<std::vector<Tensor>> groups;
  for (const Tensor& g : grads_of(params)) {
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const std::vector<Tensor>& grp) { return grp.front().device() == g.device(); });
    if (it == groups.end()) groups.push_back({g});
    else it->push_back(g);
  }
  return groups;
}

double global_grad_norm(const std::vector<ParamRef>& params) {
  return std::sqrt(read_back(sum_squares(grads_by_device(params))));
}

bool all_finite(const std::vector<ParamRef>& params) {
  return std::isfinite(read_back(sum_squares(grads_by_device(params))));
}

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm) {
  if (!(max_norm > 0) || !std::isfinite(max_norm))
    throw error("max_grad_norm must be a positive number, got ", max_norm);
  const auto groups = grads_by_device(params);
  std::vector<Tensor> totals = sum_squares(groups);
  const double total = read_back(totals);
  const double norm = std::sqrt(total);
  if (!std::isfinite(norm)) return norm;
  if (groups.size() > 1) {  // split over devices: every group is clipped by the global total
    Tensor host = Tensor::empty({1}, DType::F64);
    host.data<double>()[0] = total;
    for (size_t i = 0; i < groups.size(); ++i) totals[i] = host.to(groups[i].front().device());
  }
  for (size_t i = 0; i < groups.size(); ++i) ops::clip_by_total_all_(groups[i], totals[i], max_norm);  // torch's coef rule
  return norm;
}

}  // namespace lowrank::train
