#include "lowrank/serve/sequence_channel.h"

#include "lowrank/core/error.h"

namespace lowrank::serve {

SequenceChannel::Update SequenceChannel::wait() {
  std::unique_lock lock(mutex_);
  LR_CHECK(!delivered_finish_, "SequenceChannel::wait() after the sequence finished");
  ready_.wait(lock, [&] { return !pending_.empty() || finished_; });
  Update u;
  u.tokens.swap(pending_);
  u.logprobs.swap(pending_logprobs_);
  u.prompt_logprobs.swap(pending_prompt_logprobs_);
  if (finished_) {
    u.finished = finished_;
    u.error = error_;
    delivered_finish_ = true;
  }
  return u;
}

void SequenceChannel::push(int32_t token, std::optional<infer::PositionLogprobs> logprobs) {
  {
    std::lock_guard lock(mutex_);
    pending_.push_back(token);
    if (logprobs) pending_logprobs_.push_back(std::move(*logprobs));
  }
  ready_.notify_one();
}

void SequenceChannel::push_prompt_logprobs(std::vector<infer::PositionLogprobs> logprobs) {
  std::lock_guard lock(mutex_);  // delivered with the first token, pushed right after
  pending_prompt_logprobs_ = std::move(logprobs);
}

void SequenceChannel::finish(FinishReason reason, std::string error) {
  {
    std::lock_guard lock(mutex_);
    finished_ = reason;
    error_ = std::move(error);
  }
  ready_.notify_one();
}

}  // namespace lowrank::serve
