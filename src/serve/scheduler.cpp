#include "lowrank/serve/scheduler.h"

#include <algorithm>

#include "lowrank/core/error.h"

namespace lowrank::serve {

namespace {
int64_t nanoseconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}
}  // namespace

struct Scheduler::Running {
  SequenceRequest request;
  std::shared_ptr<SequenceChannel> channel;
  std::unique_ptr<SequenceState> state;
  infer::Sampler sampler;
  std::vector<int32_t> context;  // prompt + generated: what the repetition penalty sees
  int64_t generated = 0;
  bool done = false;

  Running(Queued q, std::unique_ptr<SequenceState> s)
      : request(std::move(q.request)), channel(std::move(q.channel)), state(std::move(s)),
        sampler(request.options.sampling, request.prompt.size(), request.options.eos_ids), context(request.prompt) {}
};

void Scheduler::end(Running& r, FinishReason reason, std::string error) {
  running_.fetch_sub(1);  // first: a client that has its reply never sees itself still running
  r.done = true;
  r.channel->finish(reason, std::move(error));
}

Scheduler::Scheduler(DecodeStep& compute, int64_t max_batch) : compute_(compute), max_batch_(max_batch) {
  LR_CHECK(max_batch >= 1);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { drain(); }

std::shared_ptr<SequenceChannel> Scheduler::submit(SequenceRequest request) {
  LR_CHECK(!request.prompt.empty() && request.options.max_new_tokens >= 1);
  auto channel = std::make_shared<SequenceChannel>();
  {
    std::lock_guard lock(mutex_);
    if (draining_) throw error("the server is shutting down");
    queue_.push_back({std::move(request), channel, std::chrono::steady_clock::now()});
  }
  wake_.notify_one();
  return channel;
}

void Scheduler::drain() {
  {
    std::lock_guard lock(mutex_);
    draining_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lock(mutex_);
    s.queued = static_cast<int64_t>(queue_.size());
  }
  s.running = running_.load();
  s.rounds = rounds_.load();
  s.round_sequences = round_sequences_.load();
  s.last_batch = last_batch_.load();
  s.prompt_tokens = prompt_tokens_.load();
  s.generated_tokens = generated_tokens_.load();
  s.prefill_rounds = prefill_rounds_.load();
  s.prefill_seconds = 1e-9 * static_cast<double>(prefill_ns_.load());
  s.decode_seconds = 1e-9 * static_cast<double>(decode_ns_.load());
  s.queue_seconds = 1e-9 * static_cast<double>(queue_ns_.load());
  return s;
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Running>> running;
  for (;;) {
    std::vector<Queued> admitted;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return !running.empty() || !queue_.empty() || draining_; });
      if (running.empty() && queue_.empty()) return;  // draining, and nothing left
      while (static_cast<int64_t>(running.size() + admitted.size()) < max_batch_ && !queue_.empty()) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    for (size_t i = 0; i < admitted.size(); ++i) {  // KV caches are allocated outside the lock
      Queued& q = admitted[i];
      if (q.channel->cancelled()) {  // its client left while it waited
        q.channel->finish(FinishReason::Cancelled);
        continue;
      }
      const auto capacity = static_cast<int64_t>(q.request.prompt.size()) + q.request.options.max_new_tokens;
      if (!running.empty() && compute_.room_for(capacity) == DecodeStep::Room::Later) {
        // The shared KV pool is full for now: this request and those after it wait, in order,
        // until running sequences finish and return their blocks.
        std::lock_guard lock(mutex_);
        for (size_t j = admitted.size(); j-- > i;) queue_.push_front(std::move(admitted[j]));
        break;
      }
      try {
        const int64_t waited = nanoseconds(std::chrono::steady_clock::now() - q.since);
        running.push_back(std::make_unique<Running>(std::move(q), compute_.open(capacity)));
        queue_ns_.fetch_add(waited);
        running_.fetch_add(1);
      } catch (const std::exception& e) {
        q.channel->finish(FinishReason::Failed, e.what());
      }
    }
    try {
      step(running);
    } catch (const std::exception& e) {  // the thread must survive: fail this round's sequences, go on
      for (auto& r : running)
        if (!r->done) end(*r, FinishReason::Failed, e.what());
    }
    std::erase_if(running, [](const auto& r) { return r->done; });
  }
}

void Scheduler::step(std::vector<std::unique_ptr<Running>>& running) {
  std::vector<StepEntry> batch;
  std::vector<Running*> stepped;
  for (auto& r : running) {
    if (r->channel->cancelled()) {
      end(*r, FinishReason::Cancelled);
      continue;
    }
    StepEntry e;
    e.state = r->state.get();
    // First step: the whole prompt (prefill); then the token sampled last round.
    e.tokens = r->generated == 0 ? std::span<const int32_t>(r->request.prompt)
                                 : std::span<const int32_t>(&r->context.back(), 1);
    e.hook = r->request.hook.get();
    e.adapter = r->request.adapter;
    e.adapter_scale = r->request.adapter_scale;
    // The sampler would pick the argmax, and nobody needs the logits' log-probabilities.
    e.argmax_only = r->sampler.picks_argmax_now(r->context.size()) && r->request.top_logprobs < 0;
    e.prompt_top_logprobs = r->generated == 0 ? r->request.prompt_top_logprobs : -1;
    e.feeds_argmax = e.argmax_only && r->generated + 1 < r->request.options.max_new_tokens;
    batch.push_back(std::move(e));
    stepped.push_back(r.get());
  }
  if (batch.empty()) return;
  const bool prefills = std::any_of(stepped.begin(), stepped.end(), [](const Running* r) { return r->generated == 0; });
  const auto start = std::chrono::steady_clock::now();
  compute_.run(batch);
  (prefills ? prefill_ns_ : decode_ns_).fetch_add(nanoseconds(std::chrono::steady_clock::now() - start));
  if (prefills) prefill_rounds_.fetch_add(1);
  rounds_.fetch_add(1);
  round_sequences_.fetch_add(static_cast<int64_t>(batch.size()));
  last_batch_.store(static_cast<int64_t>(batch.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    Running& r = *stepped[i];
    if (!batch[i].error.empty()) {
      end(r, FinishReason::Failed, batch[i].error);
      continue;
    }
    if (r.generated == 0) {
      prompt_tokens_.fetch_add(static_cast<int64_t>(r.request.prompt.size()));
      if (r.request.prompt_top_logprobs >= 0) r.channel->push_prompt_logprobs(std::move(batch[i].prompt_logprobs));
    }
    std::vector<float> raw;  // the sampler changes the logits in place (penalty, temperature)
    if (r.request.top_logprobs >= 0) raw = batch[i].logits;
    const int32_t next = batch[i].argmax >= 0 ? batch[i].argmax : r.sampler.next(batch[i].logits, r.context);
    r.context.push_back(next);
    ++r.generated;
    generated_tokens_.fetch_add(1);
    if (r.request.top_logprobs >= 0) r.channel->push(next, infer::position_logprobs(raw, next, r.request.top_logprobs));
    else r.channel->push(next);
    const auto& eos = r.request.options.eos_ids;
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) end(r, FinishReason::Eos);
    else if (r.generated >= r.request.options.max_new_tokens) end(r, FinishReason::Length);
  }
}

}  // namespace lowrank::serve
