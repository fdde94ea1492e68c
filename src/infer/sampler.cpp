#include "lowrank/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
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
  if (!(min_p >= 0 && min_p <= 1)) throw error("--min-p must be in [0, 1], got ", min_p);
  if (!(presence_penalty >= -2 && presence_penalty <= 2)) throw error("--presence-penalty must be in [-2, 2], got ", presence_penalty);
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    throw error("--frequency-penalty must be in [-2, 2], got ", frequency_penalty);
  for (const auto& [id, bias] : logit_bias)
    if (id < 0 || !(bias >= -100 && bias <= 100)) throw error("logit_bias: token ", id, " bias ", bias, " (ids >= 0, biases in [-100, 100])");
  if (min_tokens < 0) throw error("min_tokens must not be negative, got ", min_tokens);
}

bool SamplingOptions::picks_raw_argmax() const {
  return greedy && repetition_penalty == 1.0 && presence_penalty == 0 && frequency_penalty == 0 && logit_bias.empty();
}

bool Sampler::picks_argmax_now(size_t context_size) const {
  const bool banning = opt_.min_tokens > 0 && !stop_ids_.empty() &&
                       context_size < prompt_length_ + static_cast<size_t>(opt_.min_tokens);
  return opt_.picks_raw_argmax() && !banning;
}

int32_t Sampler::next(std::vector<float>& logits, const std::vector<int32_t>& context) {
  const int64_t V = static_cast<int64_t>(logits.size());
  for (const auto& [id, bias] : opt_.logit_bias)
    if (id < V) logits[id] += bias;
  if (opt_.min_tokens > 0 && context.size() < prompt_length_ + static_cast<size_t>(opt_.min_tokens))
    for (int32_t id : stop_ids_)
      if (id >= 0 && id < V) logits[id] = -std::numeric_limits<float>::infinity();
  if (opt_.repetition_penalty != 1.0) {  // as transformers: divide positive logits, multiply negative
    std::vector<char> seen(V, 0);
    for (int32_t id : context)
      if (id >= 0 && id < V) seen[id] = 1;
    const float p = static_cast<float>(opt_.repetition_penalty);
    for (int64_t i = 0; i < V; ++i)
      if (seen[i]) logits[i] = logits[i] < 0 ? logits[i] * p : logits[i] / p;
  }
  if (opt_.frequency_penalty != 0 || opt_.presence_penalty != 0) {  // vLLM: the generated tokens only
    if (counted_ < prompt_length_ || counted_ > context.size()) {  // first call, or another context
      generated_counts_.clear();
      counted_ = std::min(prompt_length_, context.size());
    }
    for (; counted_ < context.size(); ++counted_) ++generated_counts_[context[counted_]];
    for (const auto& [id, n] : generated_counts_)
      if (id >= 0 && id < V) logits[id] -= static_cast<float>(opt_.frequency_penalty * static_cast<double>(n) + opt_.presence_penalty);
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
  if (opt_.min_p > 0) {  // tokens less likely than min_p × the most likely one (at least one stays)
    const double floor = opt_.min_p * probs[0];
    int64_t n = 1;
    while (n < keep && probs[n] >= floor) ++n;
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
