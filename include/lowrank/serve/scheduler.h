#pragma once
// Continuous batching: submitted sequences wait in a queue and join the running set between
// decode rounds (at most max_batch run at once); every round steps each running sequence by one
// token through the DecodeStep, samples it with the sequence's own sampler and hands it to the
// sequence's channel. The scheduler's thread is the only one that touches the model.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "lowrank/infer/generator.h"
#include "lowrank/serve/decode_step.h"
#include "lowrank/serve/sequence_channel.h"

namespace lowrank::serve {

struct SequenceRequest {
  std::vector<int32_t> prompt;
  infer::GenerateOptions options;                // max_new_tokens (>= 1), sampling, eos ids
  std::shared_ptr<model::ProjectionHook> hook;   // the adapter (kept alive while it runs), or null
  std::shared_ptr<const lora::Adapter> adapter;  // the same adapter, for steps that mix adapters
  double adapter_scale = 1.0;                    // its user scale
  // >= 0: each generated token comes with its log-probability and this many alternatives
  // (infer/token_logprobs.h); the prompt's tokens too with prompt_top_logprobs >= 0.
  int top_logprobs = -1;
  int prompt_top_logprobs = -1;
};

struct SchedulerStats {
  int64_t running = 0, queued = 0;
  int64_t rounds = 0;              // decode rounds run
  int64_t round_sequences = 0;     // sum of the rounds' batch sizes
  int64_t last_batch = 0;          // sequences in the latest round
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t prefill_rounds = 0;     // rounds that prefilled at least one prompt (counted in rounds too)
  double prefill_seconds = 0;     // wall time of those rounds' compute
  double decode_seconds = 0;      // and of the other rounds'
  double queue_seconds = 0;       // time sequences waited between submit and admission, summed
};

class Scheduler {
 public:
  Scheduler(DecodeStep& compute, int64_t max_batch);
  ~Scheduler();  // drains
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a sequence; its tokens arrive through the returned channel. Throws Error once
  // draining has begun. The prompt must fit the context with max_new_tokens (checked by the caller).
  std::shared_ptr<SequenceChannel> submit(SequenceRequest request);
  // Stops accepting sequences, finishes every one already submitted, then stops the thread.
  void drain();
  SchedulerStats stats() const;
  int64_t max_batch() const { return max_batch_; }

 private:
  struct Queued {
    SequenceRequest request;
    std::shared_ptr<SequenceChannel> channel;
    std::chrono::steady_clock::time_point since;  // submitted
  };
  struct Running;
  void loop();
  void step(std::vector<std::unique_ptr<Running>>& running);
  void end(Running& r, FinishReason reason, std::string error = {});

  DecodeStep& compute_;
  const int64_t max_batch_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Queued> queue_;  // guarded by mutex_
  bool draining_ = false;     // guarded by mutex_
  std::atomic<int64_t> running_{0}, rounds_{0}, round_sequences_{0}, last_batch_{0};
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0};
  std::atomic<int64_t> prefill_rounds_{0}, prefill_ns_{0}, decode_ns_{0}, queue_ns_{0};
  std::thread thread_;
};

}  // namespace lowrank::serve
