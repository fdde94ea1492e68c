// The sampler's processors one at a time, on logits whose outcome is known: OpenAI's logit_bias and
// presence/frequency penalties (generated tokens only), vLLM's min_tokens, transformers' min-p,
// and when a decode step may return the argmax alone.
#include "lowrank/infer/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "lowrank/core/error.h"

using namespace lowrank;
using namespace lowrank::infer;

namespace {

SamplingOptions greedy() {
  SamplingOptions o;
  o.greedy = true;
  return o;
}

int32_t pick(const SamplingOptions& o, std::vector<float> logits, const std::vector<int32_t>& context, size_t prompt_length,
             std::vector<int32_t> stop_ids = {}) {
  Sampler s(o, prompt_length, std::move(stop_ids));
  return s.next(logits, context);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  SamplingOptions o = greedy();
  o.presence_penalty = 0.5;
  // Token 0 (2.0) against token 1 (1.9): generated once, 0 drops to 1.5; in the prompt only, no change.
  EXPECT_EQ(pick(o, {2.0f, 1.9f, 0.0f}, {7, 0}, 1), 1);
  EXPECT_EQ(pick(o, {2.0f, 1.9f, 0.0f}, {0, 7}, 1), 0);
  SamplingOptions f = greedy();
  f.frequency_penalty = 0.3;
  EXPECT_EQ(pick(f, {2.0f, 1.5f}, {1, 0}, 1), 0);     // 2.0 - 0.3 > 1.5
  EXPECT_EQ(pick(f, {2.0f, 1.5f}, {1, 0, 0}, 1), 1);  // 2.0 - 0.6 < 1.5
  f.frequency_penalty = -0.3;                          // negative: encourages repeats
  EXPECT_EQ(pick(f, {1.5f, 2.0f}, {1, 0, 0}, 1), 0);
}

// One sampler over a growing context keeps the generated tokens' counts between calls: the same
// picks as a fresh sampler that counts them all at every step.
TEST(Sampler, PenaltyCountsCarryOverGrowingContexts) {
  SamplingOptions o = greedy();
  o.frequency_penalty = 0.7;
  o.presence_penalty = 0.2;
  const std::vector<float> logits = {2.0f, 1.9f, 1.6f, 1.0f, 0.5f};
  std::vector<int32_t> context = {4, 4};  // the prompt: not penalized
  Sampler kept(o, 2);
  std::vector<int32_t> picks;
  for (int step = 0; step < 12; ++step) {
    std::vector<float> a = logits, b = logits;
    const int32_t next = kept.next(a, context);
    EXPECT_EQ(next, Sampler(o, 2).next(b, context)) << step;
    picks.push_back(next);
    context.push_back(next);
  }
  EXPECT_GT(std::set<int32_t>(picks.begin(), picks.end()).size(), 2u) << "the penalties rotate the picks";
}

TEST(Sampler, LogitBiasComesFirst) {
  SamplingOptions o = greedy();
  o.logit_bias = {{2, 5.0f}};
  EXPECT_EQ(pick(o, {1.0f, 3.0f, 0.0f}, {4}, 1), 2);
  o.logit_bias = {{1, -100.0f}};
  EXPECT_EQ(pick(o, {1.0f, 3.0f, 0.0f}, {4}, 1), 0);
}

TEST(Sampler, MinTokensHoldsBackTheStopIds) {
  SamplingOptions o = greedy();
  o.min_tokens = 2;
  const std::vector<float> logits = {0.0f, 5.0f, 1.0f};  // 1 is the stop id and the argmax
  EXPECT_EQ(pick(o, logits, {9}, 1, {1}), 2);            // nothing generated yet
  EXPECT_EQ(pick(o, logits, {9, 2}, 1, {1}), 2);         // one
  EXPECT_EQ(pick(o, logits, {9, 2, 2}, 1, {1}), 1);      // two: the stop id may come
  Sampler s(o, 1, {1});
  EXPECT_FALSE(s.picks_argmax_now(1));
  EXPECT_FALSE(s.picks_argmax_now(2));
  EXPECT_TRUE(s.picks_argmax_now(3));
  o.presence_penalty = 0.1;
  EXPECT_FALSE(Sampler(o, 1, {1}).picks_argmax_now(3)) << "a penalty reorders the logits";
  EXPECT_FALSE(SamplingOptions{}.picks_raw_argmax()) << "sampling";
}

// min_p keeps the tokens at least min_p times as likely as the most likely one: with
// probabilities 0.5, 0.3, 0.15, 0.05 and min_p 0.35 (a floor of 0.175), tokens 0 and 1 in 5:3.
TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingOptions o;
  o.min_p = 0.35;
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  std::map<int32_t, int> seen;
  for (uint64_t seed = 0; seed < 4000; ++seed) {
    o.seed = seed;
    ++seen[pick(o, logits, {0}, 1)];
  }
  EXPECT_EQ(seen.count(2) + seen.count(3), 0u);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NEAR(static_cast<double>(seen[0]) / 4000, 0.625, 0.03);
  o.min_p = 0.0;
  seen.clear();
  for (uint64_t seed = 0; seed < 4000; ++seed) {
    o.seed = seed;
    ++seen[pick(o, logits, {0}, 1)];
  }
  EXPECT_EQ(seen.size(), 4u) << "off";
}

TEST(Sampler, OutOfRangeOptionsAreRefused) {
  for (auto change : std::vector<std::function<void(SamplingOptions&)>>{
           [](SamplingOptions& o) { o.min_p = 1.5; }, [](SamplingOptions& o) { o.min_p = -0.1; },
           [](SamplingOptions& o) { o.presence_penalty = 2.5; }, [](SamplingOptions& o) { o.frequency_penalty = -3; },
           [](SamplingOptions& o) { o.logit_bias = {{1, 101.0f}}; }, [](SamplingOptions& o) { o.logit_bias = {{-1, 1.0f}}; },
           [](SamplingOptions& o) { o.min_tokens = -1; }}) {
    SamplingOptions o;
    change(o);
    EXPECT_THROW(o.validate(), Error);
  }
  SamplingOptions edge;
  edge.min_p = 1;
  edge.presence_penalty = -2;
  edge.frequency_penalty = 2;
  edge.logit_bias = {{0, -100.0f}, {3, 100.0f}};
  EXPECT_NO_THROW(edge.validate());
}

}  // namespace
