#include "lowrank/infer/batch_generator.h"

#include <algorithm>
#include <functional>
#include <memory>

#include "lowrank/core/error.h"
#include "lowrank/infer/batch_decoder.h"

namespace lowrank::infer {

std::vector<std::vector<int32_t>> generate_batch(const model::Model& model, model::ProjectionHook* hook,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerateOptions& o, const BatchOptions& batch) {
  if (batch.max_batch <= 0) throw error("the batch size must be positive, got ", batch.max_batch);
  o.sampling.validate();
  const model::ModelConfig& c = model.config();
  std::vector<int64_t> budgets(prompts.size()), blocks(prompts.size());
  const DType dtype = model.weights().embed.dtype();  // the activations' dtype
  int64_t block_size = PagedKVCache::kDefaultBlockSize;
  for (size_t i = 0; i < prompts.size(); ++i) {
    try {
      budgets[i] = generation_budget(c, prompts[i], o.max_new_tokens);
    } catch (const Error& e) {
      if (prompts.size() == 1) throw;
      throw error("prompt ", i + 1, ": ", e.what());
    }
    blocks[i] = (static_cast<int64_t>(prompts[i].size()) + budgets[i] + block_size - 1) / block_size;
  }
  // A pool for the max_batch largest sequences: whichever run together, they fit.
  std::vector<int64_t> sorted = blocks;
  std::sort(sorted.rbegin(), sorted.rend());
  int64_t pool = 0;
  for (size_t i = 0; i < sorted.size() && static_cast<int64_t>(i) < batch.max_batch; ++i) pool += sorted[i];
  std::vector<std::vector<int32_t>> outputs(prompts.size());
  if (prompts.empty()) return outputs;
  PagedKVCache cache(c, model.device(), dtype, pool, block_size);
  BatchDecoder decoder(model, cache);

  struct Running {
    size_t index;
    std::unique_ptr<PagedSequence> seq;
    Sampler sampler;
    std::vector<int32_t> context;  // prompt + generated (the sampler's repetition penalty reads it)
  };
  std::vector<Running> running;
  size_t next = 0;
  while (next < prompts.size() || !running.empty()) {
    while (next < prompts.size() && static_cast<int64_t>(running.size()) < batch.max_batch) {
      if (budgets[next] <= 0) {  // nothing to generate (max_new_tokens <= 0)
        ++next;
        continue;
      }
      const int64_t capacity = static_cast<int64_t>(prompts[next].size()) + budgets[next];
      running.push_back({next, std::make_unique<PagedSequence>(cache, capacity),
                         Sampler(o.sampling, prompts[next].size(), o.eos_ids), prompts[next]});
      ++next;
    }
    std::vector<DecodeEntry> entries(running.size());
    for (size_t i = 0; i < running.size(); ++i) {
      const Running& r = running[i];
      entries[i].seq = r.seq.get();
      entries[i].hook = hook;
      entries[i].argmax_only = r.sampler.picks_argmax_now(r.context.size());  // = the Sampler's pick
      entries[i].feeds_argmax = entries[i].argmax_only && static_cast<int64_t>(outputs[r.index].size()) + 1 < budgets[r.index];
      entries[i].tokens = outputs[r.index].empty() ? std::span<const int32_t>(r.context)
                                                   : std::span<const int32_t>(&r.context.back(), 1);
    }
    decoder.step(entries);
    for (size_t i = 0; i < running.size(); ++i) {
      Running& r = running[i];
      if (!entries[i].error.empty())
        throw error(prompts.size() == 1 ? "" : "prompt " + std::to_string(r.index + 1) + ": ", entries[i].error);
      const int32_t token = entries[i].argmax >= 0 ? entries[i].argmax : r.sampler.next(entries[i].logits, r.context);
      r.context.push_back(token);
      outputs[r.index].push_back(token);
      if (batch.on_token) batch.on_token(r.index, token);
    }
    std::erase_if(running, [&](const Running& r) {
      const auto& out = outputs[r.index];
      const bool done = std::find(o.eos_ids.begin(), o.eos_ids.end(), out.back()) != o.eos_ids.end() ||
                        static_cast<int64_t>(out.size()) >= budgets[r.index];
      if (done && batch.on_done) batch.on_done(r.index);
      return done;
    });
  }
  return outputs;
}

}  // namespace lowrank::infer
