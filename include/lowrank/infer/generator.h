#pragma once
// Text generation: prefill the prompt into a KV cache, then decode one token at a time until an
// eos id or max_new_tokens. Several adapters can be applied unmerged through the hook.
#include <functional>
#include <vector>

#include "lowrank/infer/sampler.h"
#include "lowrank/model/model.h"

namespace lowrank::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<int32_t> eos_ids;  // generation stops after producing one of these
};

// The model's eos ids (generation_config.json over config.json), ids outside the vocabulary dropped.
std::vector<int32_t> model_eos_ids(const model::ModelConfig& config);

// How many tokens a prompt may generate: max_new_tokens within the model's context. Throws Error
// if the prompt is empty, has an id outside the vocabulary or leaves no room in the context.
int64_t generation_budget(const model::ModelConfig& config, const std::vector<int32_t>& prompt,
                          int64_t max_new_tokens);

class Generator {
 public:
  Generator(const model::Model& model, model::ProjectionHook* hook) : model_(model), hook_(hook) {}

  // Returns the new tokens (the eos token included when one stopped generation). on_token is
  // called after each new token. Throws Error if the prompt is empty or does not fit the context.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                const std::function<void(int32_t)>& on_token = {});

 private:
  const model::Model& model_;
  model::ProjectionHook* hook_;
};

}  // namespace lowrank::infer
