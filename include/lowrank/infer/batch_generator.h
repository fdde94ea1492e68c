#pragma once
// Generation for many prompts at once over one PagedKVCache (continuous batching): up to
// max_batch sequences decode together, and a finished sequence's place goes to the next prompt.
// Each prompt gets what Generator::generate gives it alone: its own sampler with the same seed,
// the same stopping rules.
#include <cstdint>
#include <functional>
#include <vector>

#include "lowrank/infer/generator.h"

namespace lowrank::infer {

struct BatchOptions {
  int64_t max_batch = 64;  // sequences decoding at once
  // Called after each new token of prompt `index` (on the calling thread).
  std::function<void(size_t index, int32_t token)> on_token;
  // Called when prompt `index` has its last token (eos or its budget; on the calling thread).
  std::function<void(size_t index)> on_done;
};

// The new tokens of every prompt, in prompt order. Throws Error (naming the prompt's index) for a
// prompt Generator::generate would refuse, before generating anything.
std::vector<std::vector<int32_t>> generate_batch(const model::Model& model, model::ProjectionHook* hook,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerateOptions& options, const BatchOptions& batch = {});

}  // namespace lowrank::infer
