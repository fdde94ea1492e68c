#include "lowrank/serve/cpu_decode_step.h"

#include <exception>

#include "lowrank/core/error.h"

namespace lowrank::serve {
namespace {

struct CpuSequenceState : SequenceState {
  model::KVCache kv;
};

}  // namespace

CpuDecodeStep::CpuDecodeStep(const model::Model& model) : model_(model) {
  LR_CHECK(model.device().is_cpu(), "CpuDecodeStep needs a model on the CPU");
}

std::unique_ptr<SequenceState> CpuDecodeStep::open(int64_t capacity) {
  auto s = std::make_unique<CpuSequenceState>();
  s->kv = model::KVCache::create(model_.config(), capacity);
  return s;
}

void CpuDecodeStep::run(std::span<StepEntry> batch) {
  for (StepEntry& e : batch) {
    try {
      auto& kv = static_cast<CpuSequenceState*>(e.state)->kv;
      const auto n = static_cast<int64_t>(e.tokens.size());
      model::TokenBatch step{{e.tokens.begin(), e.tokens.end()}, 1, n};
      Tensor h = model_.hidden_states(step, e.hook, nullptr, &kv);
      if (e.prompt_top_logprobs >= 0) e.prompt_logprobs = infer::prompt_logprobs(model_, h, e.tokens, e.prompt_top_logprobs, e.hook);
      Tensor logits = model_.project_vocab(h.slice_rows(n - 1, n), e.hook);
      e.logits.assign(logits.f32(), logits.f32() + logits.numel());
    } catch (const std::exception& ex) {  // one sequence's failure must not end the others
      e.error = ex.what();
    }
  }
}

}  // namespace lowrank::serve
