#pragma once
// Evaluation: token-weighted mean negative log-likelihood over sequences (docs/cli.md, `eval`).
#include <functional>
#include <string>
#include <vector>

#include "lowrank/model/model.h"

namespace lowrank::train {

struct EvalResult {
  double loss = 0;        // token-weighted mean NLL
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // predicted positions
  int64_t sequences = 0;
};

// Mean NLL over the labelled targets of training-format examples (labels aligned with ids, -100 =
// not scored; position t predicts labels[t + 1]): the one scoring path of `lowrank eval` and of
// train's --eval-data. Examples longer than `window` tokens (0: the model's context) are split into
// consecutive windows of that many tokens, each evaluated on its own; the vocabulary projection
// runs in chunks of rows. `on_progress(done, total)` is called after each example.
EvalResult evaluate_examples(const model::Model& model, const class Dataset& data, model::ProjectionHook* hook,
                             int64_t window = 0, const std::function<void(int64_t, int64_t)>& on_progress = {});

// evaluate_examples for plain token sequences: every position t >= 1 is predicted.
EvalResult evaluate(const model::Model& model, const std::vector<std::vector<int32_t>>& sequences,
                    model::ProjectionHook* hook = nullptr, int64_t window = 0,
                    const std::function<void(int64_t, int64_t)>& on_progress = {});

}  // namespace lowrank::train
