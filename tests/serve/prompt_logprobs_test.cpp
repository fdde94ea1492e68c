// Log-probabilities of tokens (what `serve` returns for `logprobs` and for `echo` with logprobs,
// and what lm-evaluation-harness sums to score a continuation) against transformers: the
// log-softmax of the fixture model's reference logits, through `serve`'s decode step.
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/infer/token_logprobs.h"
#include "lowrank/io/files.h"
#include "lowrank/io/jsonl.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/serve/paged_decode_step.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

TEST(TokenLogprobs, PositionLogprobsIsTheLogSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, -2.0f, 0.5f};
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  z = std::log(z);
  const infer::PositionLogprobs p = infer::position_logprobs(logits, 3, 3);
  EXPECT_EQ(p.chosen.id, 3);
  EXPECT_NEAR(p.chosen.logprob, -2.0 - z, 1e-6);
  ASSERT_EQ(p.top.size(), 3u);
  EXPECT_EQ(p.top[0].id, 1);  // tied with 2: the lower id first
  EXPECT_EQ(p.top[1].id, 2);
  EXPECT_EQ(p.top[2].id, 0);
  EXPECT_NEAR(p.top[2].logprob, 1.0 - z, 1e-6);
  EXPECT_TRUE(infer::position_logprobs(logits, 0, 0).top.empty());
  // Ties and order across a longer row: the top 3 of 3, 7, 7, 1, 9, 7 are ids 4, 1, 2.
  const std::vector<float> row = {3, 7, 7, 1, 9, 7};
  const auto t = infer::position_logprobs(row, 3, 3).top;
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].id, 4);
  EXPECT_EQ(t[1].id, 1);
  EXPECT_EQ(t[2].id, 2);
  EXPECT_EQ(infer::position_logprobs(logits, 0, infer::kMaxTopLogprobs).top.size(), logits.size());
  // Large logits do not overflow: log p = x - max - log Σ e^(x - max).
  const std::vector<float> big = {1000.0f, 999.0f};
  EXPECT_NEAR(infer::position_logprobs(big, 0, 1).chosen.logprob, -std::log1p(std::exp(-1.0)), 1e-6);
}

std::vector<std::vector<int32_t>> fixture_sequences(const std::string& dir) {
  std::vector<std::vector<int32_t>> out;
  io::for_each_jsonl(dir + "/eval.jsonl", [&](int64_t, const nlohmann::json& j) {
    out.push_back(j["input_ids"].get<std::vector<int32_t>>());
  });
  return out;
}

// Each step scores the prompts in one round, as the scheduler's first step does.
std::vector<std::vector<infer::PositionLogprobs>> scored(serve::DecodeStep& step,
                                                         const std::vector<std::vector<int32_t>>& prompts, int top_n) {
  std::vector<std::unique_ptr<serve::SequenceState>> states;
  std::vector<serve::StepEntry> batch(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    states.push_back(step.open(static_cast<int64_t>(prompts[i].size()) + 1));
    batch[i].state = states.back().get();
    batch[i].tokens = prompts[i];
    batch[i].prompt_top_logprobs = top_n;
  }
  step.run(batch);
  std::vector<std::vector<infer::PositionLogprobs>> out;
  for (auto& e : batch) {
    EXPECT_TRUE(e.error.empty()) << e.error;
    EXPECT_FALSE(e.logits.empty() && e.argmax < 0) << "the next token's logits still come";
    out.push_back(std::move(e.prompt_logprobs));
  }
  return out;
}

TEST(TokenLogprobs, PromptLogprobsEqualTransformers) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto expected = io::read_json(dir + "/expected.json");
  const auto ref = io::SafetensorsFile::open(dir + "/expected_logits.safetensors");
  std::vector<std::vector<int32_t>> prompts = fixture_sequences(dir);
  ASSERT_EQ(prompts.size(), 3u);
  prompts.pop_back();  // a one-token prompt scores nothing (below)
  constexpr int kTop = 5;

  serve::PagedDecodeStep paged(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 2, m.device()));
  {
    serve::DecodeStep* step = &paged;
    const std::string which = "paged step";
    const auto got = scored(*step, prompts, kTop);
    for (size_t s = 0; s < prompts.size(); ++s) {
      const std::vector<int32_t>& ids = prompts[s];
      const Tensor logits = ref.get("logits." + std::to_string(s)).to(DType::F32);  // [n, V] from transformers
      const int64_t V = logits.dim(1);
      ASSERT_EQ(got[s].size(), ids.size() - 1) << which;
      double sum = 0;
      for (size_t t = 0; t + 1 < ids.size(); ++t) {
        const float* row = logits.f32() + t * V;
        double z = 0;
        for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]));
        const double want = row[ids[t + 1]] - std::log(z);
        const infer::PositionLogprobs& p = got[s][t];
        EXPECT_EQ(p.chosen.id, ids[t + 1]);
        EXPECT_NEAR(p.chosen.logprob, want, 1e-4) << which << " sequence " << s << " position " << t;
        ASSERT_EQ(p.top.size(), static_cast<size_t>(kTop));
        EXPECT_EQ(p.top[0].id, std::max_element(row, row + V) - row) << which << " position " << t;
        for (size_t k = 1; k < p.top.size(); ++k) EXPECT_LE(p.top[k].logprob, p.top[k - 1].logprob);
        sum += p.chosen.logprob;
      }
      // transformers' loss of the sequence is the mean of these.
      const auto& seq = expected["sequences"][s];
      EXPECT_NEAR(-sum / seq["tokens"].get<double>(), seq["loss"].get<double>(), 1e-5 * seq["loss"].get<double>()) << which;
    }
    EXPECT_TRUE(scored(*step, {{104}}, kTop).at(0).empty()) << which;
  }
}

}  // namespace
