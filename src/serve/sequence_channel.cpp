#include "lowrank/serve/sequence_channel.h"

#include "lowrank/core/error.h"

namespace lowrank::serve {

SequenceChannel::Update SequenceChannel::wait() {
  std::unique_lock lock(mutex_);
  LR_CHECK(!delivered_finish_, "SequenceChannel::wait() after the sequence finished");
  ready_.wait(lock, [&] { return !pending_.empty() || finished_; });
  Update u;
  u.tokens.swap(pending_);
  if (finished_) {
    u.finished = finished_;
    u.error = error_;
    delivered_finish_ = true;
  }
  return u;
}

void SequenceChannel::push(int32_t token) {
  {
    std::lock_guard lock(mutex_);
    pending_.push_back(token);
  }
  ready_.notify_one();
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
