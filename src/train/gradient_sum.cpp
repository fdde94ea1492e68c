#include "lowrank/train/gradient_sum.h"

#include <cstdlib>
#include <cstring>

namespace lowrank::train {

GradientSum::GradientSum(dist::Communicator& comm, int rank, const std::vector<ParamRef>& params, int64_t layers)
    : comm_(comm), rank_(rank) {
  for (const ParamRef& p : params) {
    if (p.layer >= 0 && p.layer < layers) layer_grads_[p.layer].push_back(p.grad);
    else end_grads_.push_back(p.grad);
  }
  // LOWRANK_DIST_OVERLAP=0: everything is summed after the backward (to measure what overlap gains).
  const char* overlap = std::getenv("LOWRANK_DIST_OVERLAP");
  if (overlap && std::strcmp(overlap, "0") == 0) return;
  layer_done_ = [this](int64_t layer) {
    auto it = layer_grads_.find(layer);
    if (it == layer_grads_.end()) return;  // nothing trained in this layer
    start(it->second);
    started_.insert(layer);
  };
}

void GradientSum::start(std::vector<Tensor>& tensors) { comm_.start_all_reduce_sum_(rank_, tensors); }

void GradientSum::finish(Tensor& nll) {
  // Layers the backward did not reach (below the lowest trained one) still hold their zeroed
  // gradients; every rank sums them here in the same (descending) order.
  for (auto it = layer_grads_.rbegin(); it != layer_grads_.rend(); ++it)
    if (!started_.count(it->first)) start(it->second);
  started_.clear();
  std::vector<Tensor> rest = end_grads_;
  rest.push_back(nll);
  start(rest);
  comm_.join_all_reduces(rank_);
}

}  // namespace lowrank::train
