#pragma once
// Log-probabilities of tokens under the model: the log-softmax of a logits row (the model's own
// distribution, before repetition penalty, temperature, top-k or top-p, as vLLM returns them by
// default) for the token that came next (sampled, or the prompt's next token) and for the N most
// likely tokens. What OpenAI's `logprobs` and `echo` return, and what lm-evaluation-harness sums
// to score a continuation.
#include <cstdint>
#include <span>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/model.h"

namespace lowrank::infer {

// The most alternatives a request may ask for (vLLM's default max_logprobs).
inline constexpr int kMaxTopLogprobs = 20;

struct TokenLogprob {
  int32_t id = -1;
  float logprob = 0;  // -inf for a token of probability 0 (a -inf logit)
};

struct PositionLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;  // the top_n most likely, most likely first (ties: lower id first)
};

// logits [V] of one position; `chosen` in [0, V); 0 <= top_n <= kMaxTopLogprobs.
PositionLogprobs position_logprobs(std::span<const float> logits, int32_t chosen, int top_n);

// Every position of a prompt after its first: entry t - 1 scores ids[t] from the logits of
// position t - 1. `hidden` [n, d] holds the prompt's last hidden states (any device); they go
// through the lm_head (with `hook`, as for the next token) a chunk of rows at a time, so [n, V]
// logits never exist at once.
std::vector<PositionLogprobs> prompt_logprobs(const model::Model& model, const Tensor& hidden,
                                              std::span<const int32_t> ids, int top_n,
                                              model::ProjectionHook* hook);

}  // namespace lowrank::infer
