#include "lowrank/infer/token_logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lowrank/core/error.h"

namespace lowrank::infer {
namespace {

// Rows of logits brought to the host at once: 64 × Qwen's 151,936 f32 logits = 39 MB.
constexpr int64_t kRowsPerChunk = 64;

}  // namespace

PositionLogprobs position_logprobs(std::span<const float> logits, int32_t chosen, int top_n) {
  const auto V = static_cast<int64_t>(logits.size());
  LR_CHECK(V > 0 && chosen >= 0 && chosen < V, "token ", chosen, " outside logits of ", V);
  LR_CHECK(top_n >= 0 && top_n <= kMaxTopLogprobs, "top_n ", top_n);
  // log p_i = x_i - (max + log Σ exp(x_j - max)), the sum in f64.
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_norm = static_cast<double>(max) + std::log(sum);
  auto logprob = [&](int32_t id) { return static_cast<float>(static_cast<double>(logits[id]) - log_norm); };

  PositionLogprobs out;
  out.chosen = {chosen, logprob(chosen)};
  // The top_n (<= 20) in one pass: a sorted list of the best so far, no [V] index array.
  auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const auto n = static_cast<size_t>(std::min<int64_t>(top_n, V));
  std::vector<int32_t> best;
  best.reserve(n + 1);
  for (int32_t id = 0; n > 0 && id < V; ++id) {
    if (best.size() == n && !better(id, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), id, better), id);
    if (best.size() > n) best.pop_back();
  }
  for (int32_t id : best) out.top.push_back({id, logprob(id)});
  return out;
}

std::vector<PositionLogprobs> prompt_logprobs(const model::Model& model, const Tensor& hidden,
                                              std::span<const int32_t> ids, int top_n,
                                              model::ProjectionHook* hook) {
  const auto n = static_cast<int64_t>(ids.size());
  LR_CHECK(hidden.dim(0) == n, hidden.dim(0), " hidden rows for ", n, " ids");
  std::vector<PositionLogprobs> out;
  out.reserve(n > 0 ? n - 1 : 0);
  for (int64_t begin = 0; begin + 1 < n; begin += kRowsPerChunk) {
    const int64_t end = std::min(begin + kRowsPerChunk, n - 1);  // the last row scores nothing
    const Tensor logits = model.project_vocab(hidden.slice_rows(begin, end), hook).to(Device::cpu());
    const int64_t V = logits.dim(1);
    for (int64_t r = begin; r < end; ++r)
      out.push_back(position_logprobs({logits.f32() + (r - begin) * V, static_cast<size_t>(V)}, ids[r + 1], top_n));
  }
  return out;
}

}  // namespace lowrank::infer
