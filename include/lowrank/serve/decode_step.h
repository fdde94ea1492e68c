#pragma once
// The compute behind the scheduler: one forward pass over a round's running sequences, each
// with its own KV cache and adapter. The scheduler decides who runs; a DecodeStep only computes,
// so a batched GPU step (paged KV cache, segmented LoRA) can replace the CPU one.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lowrank/infer/token_logprobs.h"
#include "lowrank/lora/adapter_cache.h"
#include "lowrank/model/model.h"

namespace lowrank::serve {

// What a sequence keeps between steps (its KV cache); opaque to the scheduler.
class SequenceState {
 public:
  virtual ~SequenceState() = default;
};

struct StepEntry {
  SequenceState* state = nullptr;
  std::span<const int32_t> tokens;       // the prompt on the first step, then the last sampled token
  model::ProjectionHook* hook = nullptr; // the sequence's adapter, or null for the base model
  // The same adapter and its user scale, for steps that mix plain-LoRA adapters in one batch
  // (the paged step; the CPU step runs `hook`).
  std::shared_ptr<const lora::Adapter> adapter;
  double adapter_scale = 1.0;
  bool argmax_only = false;              // greedy without penalty: a step may return just the argmax
  bool feeds_argmax = false;             // the next step feeds this one's argmax back (not the last token)
  int prompt_top_logprobs = -1;          // >= 0 on a prompt's step: score its tokens, with that many alternatives
  std::vector<float> logits;             // out: the next token's logits [V] (unless argmax is set)
  int32_t argmax = -1;                   // out: set instead of logits by steps that can (the paged one)
  std::vector<infer::PositionLogprobs> prompt_logprobs;  // out: with prompt_top_logprobs, tokens[1..]
  std::string error;                     // out: set when this sequence's pass failed
};

class DecodeStep {
 public:
  virtual ~DecodeStep() = default;
  // State for a sequence of at most `capacity` positions (prompt + new tokens).
  virtual std::unique_ptr<SequenceState> open(int64_t capacity) = 0;
  // Whether open(capacity) succeeds now, only once running sequences have finished (a shared pool
  // is in use: the request waits in the queue), or never (more than the whole pool: it fails).
  // Steps whose sequences allocate separately have room now.
  enum class Room { Now, Later, Never };
  virtual Room room_for(int64_t capacity) const { return Room::Now; }
  // Runs every entry's tokens and fills its logits (or its error).
  virtual void run(std::span<StepEntry> batch) = 0;
  // The device adapter cache's counters, for steps that have one.
  virtual std::optional<lora::AdapterCacheStats> adapter_cache_stats() const { return std::nullopt; }
};

}  // namespace lowrank::serve
