// The scheduler over PagedDecodeStep (what `serve --device cuda` runs), here on the CPU: requests
// of different lengths, with and without an adapter, joining a running batch, each equal to
// Generator's output for it (greedy and seeded sampling); a full pool fails only that request.
// Requests over two plain-LoRA adapters and the base model, mixed in one forward per round
// through an adapter cache of one adapter, equal Generator with each adapter's own hook. With
// merged copies on, requests that all use one adapter equal Generator over the merged model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>

#include "lowrank/infer/generator.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/merge.h"
#include "lowrank/serve/metrics.h"
#include "lowrank/serve/paged_decode_step.h"
#include "lowrank/serve/scheduler.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

std::vector<int32_t> collect(serve::SequenceChannel& c, serve::FinishReason* reason = nullptr) {
  std::vector<int32_t> tokens;
  for (;;) {
    auto u = c.wait();
    tokens.insert(tokens.end(), u.tokens.begin(), u.tokens.end());
    if (u.finished) {
      if (reason) *reason = *u.finished;
      return tokens;
    }
  }
}

TEST(PagedDecodeStep, ScheduledRepliesEqualGenerator) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::AdapterSet set({test::fixture("lora/generate/adapter_a") + ":1.0"}, m);
  std::shared_ptr<model::ProjectionHook> hook(set.hook(), [](model::ProjectionHook*) {});
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  serve::PagedDecodeStep step(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 3, m.device()));
  serve::Scheduler scheduler(step, 3);
  struct Sent {
    serve::SequenceRequest request;
    std::shared_ptr<serve::SequenceChannel> channel;
  };
  std::vector<Sent> sent;
  for (size_t i = 0; i < 8; ++i) {
    serve::SequenceRequest r;
    auto prompt = cases[i % cases.size()]["prompt"].get<std::vector<int32_t>>();
    r.prompt.assign(prompt.begin(), prompt.begin() + 1 + (i * 5) % prompt.size());
    r.options.max_new_tokens = 6 + static_cast<int64_t>(i);
    r.options.sampling.greedy = i % 3 != 2;
    r.options.sampling.seed = i;
    r.options.eos_ids = infer::model_eos_ids(m.config());
    if (i % 2) r.hook = hook;
    sent.push_back({r, scheduler.submit(r)});
  }
  for (auto& s : sent) {
    infer::Generator g(m, s.request.hook.get());
    EXPECT_EQ(collect(*s.channel), g.generate(s.request.prompt, s.request.options));
  }
  // A request larger than the whole pool fails alone.
  serve::PagedDecodeStep tiny(m, 2);
  serve::Scheduler small(tiny, 2);
  serve::SequenceRequest big;
  big.prompt.assign(40, 5);
  big.options.max_new_tokens = 4;
  big.options.sampling.greedy = true;
  serve::FinishReason why{};
  collect(*small.submit(big), &why);
  EXPECT_EQ(why, serve::FinishReason::Failed);
  serve::SequenceRequest fits = big;
  fits.prompt.assign(10, 5);
  collect(*small.submit(fits), &why);
  EXPECT_NE(why, serve::FinishReason::Failed);
  // Requests that fit the pool only one at a time: the later ones wait for the blocks, then run.
  std::vector<std::shared_ptr<serve::SequenceChannel>> waiting;
  serve::SequenceRequest each = big;
  each.prompt.assign(12, 7);
  each.options.max_new_tokens = 8;  // 20 positions: both blocks of the pool
  for (int i = 0; i < 3; ++i) waiting.push_back(small.submit(each));
  infer::Generator g(m, nullptr);
  const auto want = g.generate(each.prompt, each.options);
  for (auto& c : waiting) {
    serve::FinishReason reason{};
    EXPECT_EQ(collect(*c, &reason), want);
    EXPECT_NE(reason, serve::FinishReason::Failed);
  }
}

TEST(PagedDecodeStep, MixedAdaptersThroughACacheOfOneEqualGenerator) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  struct Served {
    std::shared_ptr<lora::Adapter> adapter;
    double scale;
    std::shared_ptr<lora::LoraHook> hook;
  };
  std::vector<Served> adapters;
  for (auto [name, scale] : {std::pair{"adapter_a", 1.0}, std::pair{"adapter_b", 0.5}}) {
    auto a = std::make_shared<lora::Adapter>(lora::Adapter::load(test::fixture("lora/generate/") + name, m));
    ASSERT_TRUE(lora::is_mixable(*a, static_cast<int>(m.config().num_layers))) << name;
    adapters.push_back({a, scale, std::make_shared<lora::LoraHook>(std::vector<lora::ActiveAdapter>{{a.get(), scale}})});
  }
  serve::PagedDecodeStep step(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 4, m.device()), /*max_device_adapters=*/1);
  serve::Scheduler scheduler(step, 4);
  std::vector<std::pair<serve::SequenceRequest, std::shared_ptr<serve::SequenceChannel>>> sent;
  for (size_t i = 0; i < 9; ++i) {
    serve::SequenceRequest r;
    auto prompt = cases[i % cases.size()]["prompt"].get<std::vector<int32_t>>();
    r.prompt.assign(prompt.begin(), prompt.begin() + 1 + (i * 3) % prompt.size());
    r.options.max_new_tokens = 5 + static_cast<int64_t>(i % 4);
    r.options.sampling.greedy = i % 4 != 3;
    r.options.sampling.seed = i;
    r.options.eos_ids = infer::model_eos_ids(m.config());
    if (i % 3 != 2) {  // adapter a, adapter b, the base model, ...
      const Served& a = adapters[i % 3];
      r.hook = a.hook;
      r.adapter = a.adapter;
      r.adapter_scale = a.scale;
    }
    sent.emplace_back(r, scheduler.submit(r));
  }
  for (auto& [request, channel] : sent) {
    infer::Generator g(m, request.hook.get());
    EXPECT_EQ(collect(*channel), g.generate(request.prompt, request.options));
  }
  const auto stats = step.adapter_cache_stats();
  ASSERT_TRUE(stats.has_value());
  EXPECT_GE(stats->loads, 2u);
  EXPECT_GE(stats->evictions, 1u) << "two adapters through a cache of one";
  EXPECT_EQ(stats->resident, 1u);
  const std::string text = serve::ServerMetrics().render(scheduler.stats(), 4, 2, stats);
  for (const char* name : {"lowrank_adapter_cache_hits_total ", "lowrank_adapter_cache_loads_total ",
                           "lowrank_adapter_cache_evictions_total "})
    EXPECT_NE(text.find(name), std::string::npos) << name;
  // A GPU server's allocator counters (the server passes them for a CUDA model).
  const std::string gpu = serve::ServerMetrics().render(scheduler.stats(), 4, 2, stats, DeviceMemoryCounters{3 << 20, 17});
  EXPECT_NE(gpu.find("\nlowrank_device_reserved_bytes 3145728\n"), std::string::npos) << gpu;
  EXPECT_NE(gpu.find("\nlowrank_device_allocations_total 17\n"), std::string::npos) << gpu;
  EXPECT_EQ(text.find("lowrank_device_"), std::string::npos);
}

TEST(PagedDecodeStep, OneAdapterRequestsOnAMergedCopyEqualGeneratorOverTheMergedModel) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir), merged = model::Model::load(dir);
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  auto a = std::make_shared<lora::Adapter>(lora::Adapter::load(test::fixture("lora/generate/adapter_a"), m));
  const double scale = 0.8;
  lora::merge_adapter(merged, *a, scale);
  serve::PagedDecodeStep step(m, serve::PagedDecodeStep::blocks_for_batch(m.config(), 3, m.device()), 2, /*merged_adapters=*/1,
                              /*merge_after_steps=*/0);
  serve::Scheduler scheduler(step, 3);
  auto hook = std::make_shared<lora::LoraHook>(std::vector<lora::ActiveAdapter>{{a.get(), scale}});
  std::vector<std::pair<serve::SequenceRequest, std::shared_ptr<serve::SequenceChannel>>> sent;
  for (size_t i = 0; i < 6; ++i) {
    serve::SequenceRequest r;
    auto prompt = cases[i % cases.size()]["prompt"].get<std::vector<int32_t>>();
    r.prompt.assign(prompt.begin(), prompt.begin() + 1 + (i * 4) % prompt.size());
    r.options.max_new_tokens = 4 + static_cast<int64_t>(i);
    r.options.sampling.greedy = i % 3 != 1;
    r.options.sampling.seed = i;
    r.options.eos_ids = infer::model_eos_ids(m.config());
    r.hook = hook;
    r.adapter = a;
    r.adapter_scale = scale;
    sent.emplace_back(r, scheduler.submit(r));
  }
  for (auto& [request, channel] : sent) {
    infer::Generator g(merged, nullptr);
    EXPECT_EQ(collect(*channel), g.generate(request.prompt, request.options));
  }
  const auto stats = step.adapter_cache_stats();
  ASSERT_TRUE(stats.has_value());
  EXPECT_GE(stats->merged_batches, 6u) << "every prefill and decode batch ran merged";
  EXPECT_EQ(stats->merged_made, 1u);
  EXPECT_EQ(stats->merged_resident, 1u);
  const std::string text = serve::ServerMetrics().render(scheduler.stats(), 3, 1, stats);
  EXPECT_NE(text.find("lowrank_merged_batches_total " + std::to_string(stats->merged_batches)), std::string::npos);
  EXPECT_NE(text.find("lowrank_merged_copies_resident 1"), std::string::npos);
}

// The CPU's default pool: --max-batch places of at most 4,096 positions, within a quarter of the
// machine's memory, never less than one place.
TEST(PagedDecodeStep, CpuPoolIsBoundedByContextAndMemory) {
  model::ModelConfig c = model::ModelConfig::load(test::model_fixture("llama"));
  const int64_t bs = infer::PagedKVCache::kDefaultBlockSize;
  const int64_t place = (std::min<int64_t>(c.max_position_embeddings, serve::PagedDecodeStep::kCpuPositionsPerPlace) + bs - 1) / bs;
  EXPECT_EQ(serve::PagedDecodeStep::blocks_for_batch(c, 4, Device::cpu()), 4 * place);
  c.max_position_embeddings = 131072;  // a long-context model: 4,096 positions a place on the CPU
  EXPECT_EQ(serve::PagedDecodeStep::blocks_for_batch(c, 2, Device::cpu()), 2 * 4096 / bs);
  EXPECT_EQ(serve::PagedDecodeStep::blocks_for_batch(c, 2, Device::cuda(0)), 2 * 131072 / bs);
  const int64_t huge = serve::PagedDecodeStep::blocks_for_batch(c, 1 << 20, Device::cpu());
  const int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
  EXPECT_LE(huge * infer::PagedKVCache::block_bytes(c, DType::F32, bs), memory / 4);
  EXPECT_GE(huge, 4096 / bs);
}

}  // namespace
