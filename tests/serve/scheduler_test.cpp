// The scheduler with a fake compute: continuous batching within --max-batch, each sequence's
// tokens in its own channel and in order, eos/length/cancel endings, draining.
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <thread>

#include "lowrank/serve/scheduler.h"

using namespace lowrank;
using namespace lowrank::serve;

namespace {

constexpr int64_t kVocab = 1000;
constexpr int32_t kFailingToken = 666;  // a prompt starting with it makes the fake compute fail

// Next token = (last token fed + the sequence's step) % kVocab, as argmax of one-hot logits; a
// sequence's "state" counts its steps. Records each round's batch size.
class FakeCompute : public DecodeStep {
 public:
  struct State : SequenceState {
    int64_t steps = 0, capacity = 0, fed = 0;
  };
  std::unique_ptr<SequenceState> open(int64_t capacity) override {
    auto s = std::make_unique<State>();
    s->capacity = capacity;
    return s;
  }
  void run(std::span<StepEntry> batch) override {
    {
      std::lock_guard lock(mutex);
      batch_sizes.push_back(static_cast<int64_t>(batch.size()));
    }
    for (auto& e : batch) {
      auto* s = static_cast<State*>(e.state);
      s->fed += static_cast<int64_t>(e.tokens.size());
      if (s->fed > s->capacity) {  // the scheduler sized the state wrongly
        e.error = "over capacity";
        continue;
      }
      if (e.tokens.front() == kFailingToken) {
        e.error = "boom";
        continue;
      }
      e.logits.assign(kVocab, 0.0f);
      e.logits[(e.tokens.back() + ++s->steps) % kVocab] = 1.0f;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // let submissions interleave
  }
  std::mutex mutex;
  std::vector<int64_t> batch_sizes;
};

std::vector<int32_t> expected_tokens(int32_t last_prompt_token, int64_t n) {
  std::vector<int32_t> out;
  int32_t last = last_prompt_token;
  for (int64_t step = 1; step <= n; ++step) out.push_back(last = static_cast<int32_t>((last + step) % kVocab));
  return out;
}

SequenceRequest request(int32_t first, int64_t max_new, std::vector<int32_t> eos = {}) {
  SequenceRequest r;
  r.prompt = {first, first + 1};
  r.options.max_new_tokens = max_new;
  r.options.sampling.greedy = true;
  r.options.eos_ids = std::move(eos);
  return r;
}

std::pair<std::vector<int32_t>, FinishReason> collect(SequenceChannel& c) {
  std::vector<int32_t> tokens;
  for (;;) {
    auto u = c.wait();
    tokens.insert(tokens.end(), u.tokens.begin(), u.tokens.end());
    if (u.finished) return {tokens, *u.finished};
  }
}

TEST(Scheduler, ContinuousBatchingKeepsEverySequenceApart) {
  FakeCompute compute;
  Scheduler scheduler(compute, 3);
  constexpr int kClients = 12;
  std::vector<std::thread> clients;
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<FinishReason> reasons(kClients);
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(i % 4));  // arrive while others run
      auto channel = scheduler.submit(request(10 * i, 5 + i));
      std::tie(got[i], reasons[i]) = collect(*channel);
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(got[i], expected_tokens(10 * i + 1, 5 + i)) << "client " << i;
    EXPECT_EQ(reasons[i], FinishReason::Length);
  }
  const auto& sizes = compute.batch_sizes;
  EXPECT_LE(*std::max_element(sizes.begin(), sizes.end()), 3);
  EXPECT_GT(*std::max_element(sizes.begin(), sizes.end()), 1) << "sequences never shared a round";
  const auto stats = scheduler.stats();
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.queued, 0);
  EXPECT_EQ(stats.prompt_tokens, 2 * kClients);
  int64_t generated = 0;
  for (int i = 0; i < kClients; ++i) generated += 5 + i;
  EXPECT_EQ(stats.generated_tokens, generated);
}

TEST(Scheduler, EosEndsASequenceWithItsToken) {
  FakeCompute compute;
  Scheduler scheduler(compute, 2);
  const auto all = expected_tokens(1, 10);
  auto [tokens, reason] = collect(*scheduler.submit(request(0, 10, {all[3]})));
  EXPECT_EQ(tokens, std::vector<int32_t>(all.begin(), all.begin() + 4));
  EXPECT_EQ(reason, FinishReason::Eos);
}

TEST(Scheduler, CancelledSequenceIsDroppedAndOthersGoOn) {
  FakeCompute compute;
  Scheduler scheduler(compute, 2);
  auto long_one = scheduler.submit(request(0, 100000));
  auto first = long_one->wait();
  ASSERT_FALSE(first.tokens.empty());
  long_one->cancel();
  auto [tokens, reason] = collect(*scheduler.submit(request(5, 4)));
  EXPECT_EQ(tokens, expected_tokens(6, 4));
  for (;;) {  // the cancelled one ends as cancelled, long before its 100000 tokens
    auto u = long_one->wait();
    if (u.finished) {
      EXPECT_EQ(*u.finished, FinishReason::Cancelled);
      break;
    }
  }
  EXPECT_LT(scheduler.stats().generated_tokens, 1000);
}

TEST(Scheduler, ComputeFailureEndsOnlyThatSequence) {
  FakeCompute compute;
  Scheduler scheduler(compute, 4);
  auto good = scheduler.submit(request(7, 3));
  auto failing = scheduler.submit(request(kFailingToken, 3));
  auto failed = failing->wait();
  EXPECT_TRUE(failed.tokens.empty());
  ASSERT_TRUE(failed.finished);
  EXPECT_EQ(*failed.finished, FinishReason::Failed);
  EXPECT_EQ(failed.error, "boom");
  auto [tokens, reason] = collect(*good);
  EXPECT_EQ(tokens, expected_tokens(8, 3));
  EXPECT_EQ(reason, FinishReason::Length);
}

TEST(Scheduler, DrainFinishesQueuedSequencesThenRefusesNewOnes) {
  FakeCompute compute;
  Scheduler scheduler(compute, 1);
  std::vector<std::shared_ptr<SequenceChannel>> channels;
  for (int i = 0; i < 5; ++i) channels.push_back(scheduler.submit(request(i, 20)));
  scheduler.drain();
  for (int i = 0; i < 5; ++i) {
    auto [tokens, reason] = collect(*channels[i]);
    EXPECT_EQ(tokens, expected_tokens(i + 1, 20));
    EXPECT_EQ(reason, FinishReason::Length);
  }
  EXPECT_THROW(scheduler.submit(request(0, 1)), Error);
}

}  // namespace
