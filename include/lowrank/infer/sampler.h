#pragma once
// Choosing the next token from logits, with transformers' logits processors in their order:
// repetition penalty, temperature, top-k, top-p; then argmax (greedy) or a seeded draw.
#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

#include "lowrank/core/rng.h"

namespace lowrank::infer {

// Beyond these the sampler's f32 arithmetic overflows: 1 / temperature, and the logits multiplied
// or divided by the penalty (NaN probabilities, or every logit infinite). `lowrank serve` treats a
// temperature below the minimum as greedy (as vLLM does); the CLI refuses it.
inline constexpr double kMinTemperature = 1e-5;
inline constexpr double kMinRepetitionPenalty = 1e-3, kMaxRepetitionPenalty = 1e3;

struct SamplingOptions {
  bool greedy = false;
  double temperature = 1.0;        // >= kMinTemperature
  int64_t top_k = 0;               // 0: off
  double top_p = 1.0;              // (0, 1]; 1: off
  double min_p = 0.0;              // [0, 1]; 0: off (transformers' MinPLogitsWarper, after top-p)
  double repetition_penalty = 1.0; // 1: off; >1 discourages tokens already in the sequence; within the limits above
  // OpenAI's (vLLM's) penalties on the generated tokens, not the prompt's: each logit less
  // frequency_penalty × its count and presence_penalty once if it occurs; in [-2, 2].
  double presence_penalty = 0.0, frequency_penalty = 0.0;
  std::map<int32_t, float> logit_bias;  // OpenAI's: added to those ids' logits first; each in [-100, 100]
  int64_t min_tokens = 0;          // the stop ids cannot come before this many generated tokens (vLLM's)
  uint64_t seed = 0;
  void validate() const;  // Error naming the bad option
  // Whether the pick is the raw logits' argmax at every step once min_tokens are out: greedy with
  // nothing that reorders the logits (a decode step may then return the argmax alone).
  bool picks_raw_argmax() const;
};

class Sampler {
 public:
  // `prompt_length`: how many ids of a context are the prompt (the penalties on generated tokens
  // count the rest); `stop_ids`: what min_tokens holds back.
  explicit Sampler(SamplingOptions options, size_t prompt_length = 0, std::vector<int32_t> stop_ids = {})
      : opt_(std::move(options)), rng_(opt_.seed), prompt_length_(prompt_length), stop_ids_(std::move(stop_ids)) {}
  // logits [V] (modified in place); `context` = prompt + generated ids so far, growing by appends
  // from call to call (the generated tokens' counts are kept, not recounted). Processors in this
  // order: logit bias and min_tokens' ban, repetition, frequency and presence penalties (vLLM's
  // order), then transformers' temperature, top-k, top-p, min-p; then argmax (greedy) or a draw.
  int32_t next(std::vector<float>& logits, const std::vector<int32_t>& context);
  // Whether this step's pick is the raw logits' argmax (context: as next() would get it).
  bool picks_argmax_now(size_t context_size) const;

 private:
  SamplingOptions opt_;
  Rng rng_;
  size_t prompt_length_;
  std::vector<int32_t> stop_ids_;
  // The presence/frequency penalties' counts of the generated ids context[prompt_length_, counted_).
  std::unordered_map<int32_t, int64_t> generated_counts_;
  size_t counted_ = 0;
};

}  // namespace lowrank::infer
