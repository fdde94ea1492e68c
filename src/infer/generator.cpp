#include "lowrank/infer/generator.h"

#include <algorithm>

#include "lowrank/core/error.h"
#include "lowrank/infer/batch_generator.h"

namespace lowrank::infer {

std::vector<int32_t> model_eos_ids(const model::ModelConfig& config) {
  std::vector<int32_t> ids;
  for (int64_t e : config.eos_token_ids)
    if (e >= 0 && e < config.vocab_size) ids.push_back(static_cast<int32_t>(e));
  return ids;
}

int64_t generation_budget(const model::ModelConfig& c, const std::vector<int32_t>& prompt, int64_t max_new_tokens) {
  if (prompt.empty()) throw error("the prompt is empty (no tokens)");
  for (int32_t id : prompt)
    if (id < 0 || id >= c.vocab_size) throw error("prompt token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
  const int64_t context = c.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) >= context)
    throw error("the prompt has ", prompt.size(), " tokens; the model's context window is ", context,
                " (no room to generate)");
  return std::min<int64_t>(max_new_tokens, context - static_cast<int64_t>(prompt.size()));
}

std::vector<int32_t> Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& o,
                                         const std::function<void(int32_t)>& on_token) {
  const auto& c = model_.config();
  const int64_t budget = generation_budget(c, prompt, o.max_new_tokens);
  o.sampling.validate();
  if (!model_.device().is_cpu()) {  // the GPU decodes through the paged KV cache (batch_generator.h)
    BatchOptions b;
    b.max_batch = 1;
    if (on_token) b.on_token = [&](size_t, int32_t token) { on_token(token); };
    return generate_batch(model_, hook_, {prompt}, o, b)[0];
  }
  model::KVCache kv = model::KVCache::create(c, static_cast<int64_t>(prompt.size()) + budget);
  Sampler sampler(o.sampling, prompt.size(), o.eos_ids);
  std::vector<int32_t> context_ids = prompt, out;
  model::TokenBatch step{prompt, 1, static_cast<int64_t>(prompt.size())};
  for (int64_t n = 0; n < budget; ++n) {
    // When the cached keys' RoPE no longer applies (LongRoPE crossing to its long factors;
    // transformers' Phi-3 drops its cache there too): the whole sequence again.
    if (n > 0 && model_.rope_changes(kv.length, kv.length + step.seq)) {
      kv.length = 0;
      step = model::TokenBatch{context_ids, 1, static_cast<int64_t>(context_ids.size())};
    }
    Tensor h = model_.hidden_states(step, hook_, nullptr, &kv);
    Tensor logits = model_.project_vocab(h.slice_rows(step.seq - 1, step.seq), hook_).to(Device::cpu());
    std::vector<float> row(logits.f32(), logits.f32() + logits.numel());
    const int32_t next = sampler.next(row, context_ids);
    out.push_back(next);
    context_ids.push_back(next);
    if (on_token) on_token(next);
    if (std::find(o.eos_ids.begin(), o.eos_ids.end(), next) != o.eos_ids.end()) break;
    step = model::TokenBatch{{next}, 1, 1};
  }
  return out;
}

}  // namespace lowrank::infer
