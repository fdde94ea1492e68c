#pragma once
// Ranks as threads of this process over CPU tensors: the last rank to arrive sums every tensor in
// rank order (deterministic) and writes the sum into every rank's copy.
#include <condition_variable>
#include <mutex>

#include "lowrank/dist/communicator.h"

namespace lowrank::dist {

class InProcessCommunicator : public Communicator {
 public:
  // A rank waits at most `timeout_s` for the others in a collective.
  explicit InProcessCommunicator(int size, double timeout_s = collective_timeout_seconds());
  int size() const override { return size_; }
  void all_reduce_sum_(int rank, std::vector<Tensor>& tensors) override;
  void abort(int rank, const std::string& why) override;

 private:
  void reduce_arrived();  // with mutex_ held, every rank present
  void throw_if_aborted(int rank) const;

  const int size_;
  const double timeout_s_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::vector<Tensor>*> slots_;  // [size]: the arrived ranks' tensors
  int arrived_ = 0;
  uint64_t generation_ = 0;  // completed collectives
  bool aborted_ = false;
  std::string abort_reason_;
};

}  // namespace lowrank::dist
