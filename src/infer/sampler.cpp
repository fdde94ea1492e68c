#include "lowrank/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "lowrank/core/error.h"

namespace lowrank::infer {

void SamplingOptions::validate() const {
  if (!(temperature >= kMinTemperature))
    throw error("--temperature must be at least ", kMinTemperature, " (--greedy for the argmax), got ", temperature);
  if (top_k < 0) throw error("--top-k must not be negative, got ", top_k);
  if (!(top_p > 0 && top_p <= 1)) throw error("--top-p must be in (0, 1], got ", top_p);
  if (!(repetition_penalty >= kMinRepetitionPenalty && repetition_penalty <= kMaxRepetitionPenalty))
    throw error("--repetition-penalty must be in [", kMinRepetitionPenalty, ", ", kMaxRepetitionPenalty, "] (1: off), got ",
                repetition_penalty);
}

int32_t Sampler::next(std::vector<float>& logits, const std::vector<int32_t>& context) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (opt_.repetition_penalty != 1.0) {  // as transformers: divide positive logits, multiply negative
    std::vector<char> seen(V, 0);
    for (int32_t id : context)
      if (id >= 0 && id < V) seen[id] = 1;
    const float p = static_cast<float>(opt_.repetition_penalty);
    for (int64_t i = 0; i < V; ++i)
      if (seen[i]) logits[i] = logits[i] < 0 ? logits[i] * p : logits[i] / p;
  }
  if (opt_.greedy) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const float inv_t = static_cast<float>(1.0 / opt_.temperature);
  for (float& l : logits) l *= inv_t;
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = V;
  if (opt_.top_k > 0 && opt_.top_k < V) {
    keep = opt_.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  } else {
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  }
  const float mx = logits[order[0]];
  std::vector<double> probs(keep);
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += probs[i] = std::exp(static_cast<double>(logits[order[i]] - mx));
  if (opt_.top_p < 1.0) {  // smallest prefix whose mass reaches top_p (at least one token)
    double mass = 0;
    int64_t n = 0;
    while (n < keep) {
      mass += probs[n] / sum;
      ++n;
      if (mass >= opt_.top_p) break;
    }
    keep = n;
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += probs[i];
  }
  double u = static_cast<double>(rng_.uniform()) * sum;
  for (int64_t i = 0; i < keep; ++i) {
    u -= probs[i];
    if (u < 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace lowrank::infer
