#pragma once
// Evaluation: token-weighted mean negative log-likelihood over sequences (DESIGN.md, `eval`).
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

// Sequences longer than `window` tokens (0: the model's context) are split into consecutive
// windows of that many tokens, each evaluated on its own. `on_progress(done, total)` is called
// after each sequence.
EvalResult evaluate(const model::Model& model, const std::vector<std::vector<int32_t>>& sequences,
                    model::ProjectionHook* hook = nullptr, int64_t window = 0,
                    const std::function<void(int64_t, int64_t)>& on_progress = {});

// Mean NLL over the labelled targets of training-format examples (one sequence at a time), for
// --eval-data during training.
EvalResult evaluate_examples(const model::Model& model, const class Dataset& data, model::ProjectionHook* hook);

}  // namespace lowrank::train
