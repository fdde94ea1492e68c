#pragma once
// Choosing the next token from logits, with transformers' logits processors in their order:
// repetition penalty, temperature, top-k, top-p; then argmax (greedy) or a seeded draw.
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
  double repetition_penalty = 1.0; // 1: off; >1 discourages tokens already in the sequence; within the limits above
  uint64_t seed = 0;
  void validate() const;  // Error naming the bad option
};

class Sampler {
 public:
  explicit Sampler(SamplingOptions options) : opt_(options), rng_(options.seed) {}
  // logits [V] (modified in place); `context` = prompt + generated ids so far.
  int32_t next(std::vector<float>& logits, const std::vector<int32_t>& context);

 private:
  SamplingOptions opt_;
  Rng rng_;
};

}  // namespace lowrank::infer
