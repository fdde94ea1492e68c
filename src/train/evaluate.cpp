#include "lowrank/train/evaluate.h"

#include <cmath>

#include "lowrank/core/shapes_vary.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/dataset.h"

namespace lowrank::train {

EvalResult evaluate_examples(const model::Model& model, const Dataset& data, model::ProjectionHook* hook,
                             int64_t window, const std::function<void(int64_t, int64_t)>& on_progress) {
  const int64_t context = model.config().max_position_embeddings;
  if (window <= 0) window = context;
  if (model.config().learned_positions && window > context)
    throw error("--seq-len ", window, " is longer than the model's ", context, " positions");
  // Each example is its own length: on the GPU, per-shape choices (cuDNN attention plans, GEMM
  // tuning) would be made for almost every example.
  const ShapesVary varying;
  EvalResult r;
  double total = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    const Example& e = data[i];
    const int64_t len = static_cast<int64_t>(e.ids.size());
    for (int64_t start = 0; start < len; start += window) {
      const int64_t end = std::min(len, start + window);
      const std::vector<int32_t> ids(e.ids.begin() + start, e.ids.begin() + end);
      const std::vector<int32_t> labels(e.labels.begin() + start, e.labels.begin() + end);
      int64_t n = 0;
      total += model::labelled_nll(model, ids, model::shift_labels(labels, 1, end - start), &n, hook);
      r.tokens += n;
    }
    ++r.sequences;
    if (on_progress) on_progress(i + 1, data.size());
  }
  if (r.tokens == 0) throw error("no tokens to evaluate: no example has a labelled token after its first");
  r.loss = total / r.tokens;
  r.perplexity = std::exp(r.loss);
  return r;
}

EvalResult evaluate(const model::Model& model, const std::vector<std::vector<int32_t>>& sequences,
                    model::ProjectionHook* hook, int64_t window,
                    const std::function<void(int64_t, int64_t)>& on_progress) {
  std::vector<Example> examples;
  for (const auto& s : sequences) examples.push_back({s, s});
  return evaluate_examples(model, Dataset::from_examples(std::move(examples)), hook, window, on_progress);
}

}  // namespace lowrank::train
