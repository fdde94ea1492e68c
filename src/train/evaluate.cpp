#include "lowrank/train/evaluate.h"

#include <cmath>

#include "lowrank/model/backward.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/dataset.h"

namespace lowrank::train {

EvalResult evaluate(const model::Model& model, const std::vector<std::vector<int32_t>>& sequences,
                    model::ProjectionHook* hook, int64_t window,
                    const std::function<void(int64_t, int64_t)>& on_progress) {
  const int64_t context = model.config().max_position_embeddings;
  if (window <= 0) window = context;
  if (model.config().is_gpt2() && window > context)
    throw error("--seq-len ", window, " is longer than the model's ", context, " positions");
  EvalResult r;
  double total = 0;
  const int64_t n = static_cast<int64_t>(sequences.size());
  for (int64_t i = 0; i < n; ++i) {
    const auto& seq = sequences[i];
    for (size_t start = 0; start < seq.size(); start += window) {
      const size_t end = std::min(seq.size(), start + static_cast<size_t>(window));
      std::vector<int32_t> piece(seq.begin() + start, seq.begin() + end);
      int64_t count = 0;
      total += model::sequence_nll(model, piece, &count, hook);
      r.tokens += count;
    }
    ++r.sequences;
    if (on_progress) on_progress(i + 1, n);
  }
  if (r.tokens == 0) throw error("no tokens to evaluate: every sequence has fewer than 2 tokens");
  r.loss = total / r.tokens;
  r.perplexity = std::exp(r.loss);
  return r;
}

EvalResult evaluate_examples(const model::Model& model, const Dataset& data, model::ProjectionHook* hook) {
  EvalResult r;
  double total = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    const Example& e = data[i];
    const auto targets = model::shift_labels(e.labels, 1, static_cast<int64_t>(e.ids.size()));
    int64_t n = 0;
    total += model::labelled_nll(model, e.ids, targets, &n, hook);  // chunked: no [T, V] logits
    r.tokens += n;
    ++r.sequences;
  }
  if (r.tokens == 0) throw error("the evaluation data has no labelled tokens");
  r.loss = total / r.tokens;
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace lowrank::train
