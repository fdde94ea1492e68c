#pragma once
// The channel between the scheduler's thread, which produces a sequence's tokens, and the thread
// that asked for them (an HTTP handler), which consumes them. Either side may end the sequence:
// the scheduler finishes it (eos, length, error), the consumer cancels it (client gone, a stop
// string reached), and the scheduler then frees it before its next step.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/infer/token_logprobs.h"

namespace lowrank::serve {

enum class FinishReason {
  Eos,        // produced an eos id
  Length,     // reached max_new_tokens
  Cancelled,  // the consumer cancelled it
  Failed,     // the compute threw (message in Update::error)
};

class SequenceChannel {
 public:
  // What arrived since the consumer's previous wait().
  struct Update {
    std::vector<int32_t> tokens;
    std::vector<infer::PositionLogprobs> logprobs;         // one per token, when the request asked
    std::vector<infer::PositionLogprobs> prompt_logprobs;  // the prompt's positions after the first, once
    std::optional<FinishReason> finished;  // set once, with the last tokens
    std::string error;                     // with FinishReason::Failed
  };

  // Consumer side. Blocks until there are new tokens or the sequence has finished.
  Update wait();
  // Asks the scheduler to drop the sequence; tokens it still pushes are ignored.
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }

  // Scheduler side.
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  void push(int32_t token, std::optional<infer::PositionLogprobs> logprobs = std::nullopt);
  void push_prompt_logprobs(std::vector<infer::PositionLogprobs> logprobs);
  void finish(FinishReason reason, std::string error = {});

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<int32_t> pending_;
  std::vector<infer::PositionLogprobs> pending_logprobs_, pending_prompt_logprobs_;
  std::optional<FinishReason> finished_;
  std::string error_;
  bool delivered_finish_ = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace lowrank::serve
