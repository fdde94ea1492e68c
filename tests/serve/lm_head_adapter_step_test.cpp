// serve's decode step with an adapter that adapts the embedding and the lm_head (one that does
// not mix: it runs through its own hook): its logits are the model's with the adapter's hook, and
// scheduled replies equal Generator's.
#include <gtest/gtest.h>

#include "lowrank/infer/generator.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/serve/paged_decode_step.h"
#include "lowrank/serve/scheduler.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

float max_abs_diff(const std::vector<float>& a, const float* b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

TEST(DecodeStepWithAdapter, AppliesTheAdaptersLmHeadLora) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::AdapterSet set({test::fixture("lora/llama_embed_lm_head/adapter") + ":1.0"}, m);
  const std::vector<int32_t> prompt = {1, 17, 42, 99, 7, 3};
  const model::TokenBatch batch{prompt, 1, static_cast<int64_t>(prompt.size())};
  const Tensor want = m.logits(batch, set.hook()).slice_rows(batch.seq - 1, batch.seq);
  const Tensor base = m.logits(batch).slice_rows(batch.seq - 1, batch.seq);

  serve::PagedDecodeStep step(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 2, m.device()));
  auto state = step.open(16);
  serve::StepEntry e;
  e.state = state.get();
  e.tokens = prompt;
  e.hook = set.hook();
  step.run({&e, 1});
  ASSERT_TRUE(e.error.empty()) << e.error;
  ASSERT_EQ(static_cast<int64_t>(e.logits.size()), want.numel());
  EXPECT_LE(max_abs_diff(e.logits, want.f32()), 1e-5f);
  EXPECT_GT(max_abs_diff(e.logits, base.f32()), 1e-3f) << "the adapter must change the logits";

  // Scheduled greedy and sampled replies equal Generator with the same hook.
  std::shared_ptr<model::ProjectionHook> hook(set.hook(), [](model::ProjectionHook*) {});
  serve::PagedDecodeStep compute(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 2, m.device()));
  serve::Scheduler scheduler(compute, 2);
  for (bool greedy : {true, false}) {
    serve::SequenceRequest r;
    r.prompt = prompt;
    r.options.max_new_tokens = 8;
    r.options.sampling.greedy = greedy;
    r.options.sampling.seed = 5;
    r.hook = hook;
    auto channel = scheduler.submit(r);
    std::vector<int32_t> got;
    for (;;) {
      auto u = channel->wait();
      got.insert(got.end(), u.tokens.begin(), u.tokens.end());
      if (u.finished) break;
    }
    infer::Generator g(m, hook.get());
    EXPECT_EQ(got, g.generate(r.prompt, r.options)) << (greedy ? "greedy" : "sampled");
  }
}

}  // namespace
