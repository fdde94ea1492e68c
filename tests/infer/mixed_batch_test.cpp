// Mixed-adapter batches on the CPU (the reference for the CUDA path): a round mixing the base
// model, plain-LoRA adapters of different ranks and target sets (one of them at two user scales)
// and a DoRA adapter (not mixable: it runs through its own hook) gives each sequence the logits it
// gets decoded alone with its own LoraHook; the decoder's adapter cache loads each adapter once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "lowrank/core/rng.h"
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/mixed_batch_hook.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"
#include "trained_adapter.h"

using namespace lowrank;

namespace {

struct Sequence {
  std::shared_ptr<lora::Adapter> adapter;  // null: the base model
  double scale = 1.0;
  int64_t prompt = 0;
  bool mixes = true;
};

}  // namespace

TEST(MixedBatch, RoundOfSeveralAdaptersEqualsEachSequenceAlone) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto qv = test::trained_adapter(m, 4, {"q_proj", "v_proj"}, 1);
  auto all = test::trained_adapter(m, 8, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 2);
  auto mlp = test::trained_adapter(m, 2, {"down_proj", "up_proj"}, 3);
  auto dora = test::trained_adapter(m, 4, {"q_proj", "o_proj"}, 4, true);
  ASSERT_TRUE(lora::is_mixable(*all, static_cast<int>(m.config().num_layers)));
  ASSERT_FALSE(lora::is_mixable(*dora, static_cast<int>(m.config().num_layers)));
  // Prompts of equal lengths prefill together across adapters (those of 17 rows through the
  // segment GEMMs, the shorter ones through lora_rows_); qv runs at three user scales. The two
  // sequences of `all` among those of 17 rows are one segment (the decoder puts them together).
  const std::vector<Sequence> seqs = {{nullptr, 1.0, 5}, {qv, 1.0, 7},  {all, 1.0, 5},         {qv, 0.5, 7},
                                      {mlp, 2.0, 9},     {dora, 1.0, 5, false},                {all, 1.0, 6},
                                      {all, 1.0, 17},    {qv, 2.0, 17}, {all, 1.0, 17}};
  const int64_t steps = 6;
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 32);
  infer::BatchDecoder decoder(m, cache, /*max_device_adapters=*/2);
  std::vector<std::unique_ptr<infer::PagedSequence>> paged;
  std::vector<std::unique_ptr<lora::LoraHook>> hooks;
  std::vector<model::KVCache> refs;
  std::vector<std::vector<int32_t>> streams;
  for (size_t i = 0; i < seqs.size(); ++i) {
    streams.emplace_back(tokens.begin() + i, tokens.begin() + i + seqs[i].prompt + steps);
    paged.push_back(std::make_unique<infer::PagedSequence>(cache, seqs[i].prompt + steps));
    refs.push_back(model::KVCache::create(m.config(), seqs[i].prompt + steps));
    hooks.push_back(seqs[i].adapter ? std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{
                                          {seqs[i].adapter.get(), seqs[i].scale}})
                                    : nullptr);
  }
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<infer::DecodeEntry> entries(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      infer::DecodeEntry& e = entries[i];
      e.seq = paged[i].get();
      e.tokens = step == 0 ? std::span<const int32_t>(streams[i].data(), seqs[i].prompt)
                           : std::span<const int32_t>(&streams[i][seqs[i].prompt + step - 1], 1);
      e.hook = hooks[i].get();  // the DoRA sequence runs through it; mixable ones do not
      e.adapter = seqs[i].adapter;
      e.adapter_scale = seqs[i].scale;
    }
    decoder.step(entries);
    for (size_t i = 0; i < seqs.size(); ++i) {
      ASSERT_EQ(entries[i].error, "") << "sequence " << i;
      const auto n = static_cast<int64_t>(entries[i].tokens.size());
      model::TokenBatch b{{entries[i].tokens.begin(), entries[i].tokens.end()}, 1, n};
      Tensor h = m.hidden_states(b, hooks[i].get(), nullptr, &refs[i]);
      Tensor want = m.project_vocab(h.slice_rows(n - 1, n), hooks[i].get());
      float max_ref = 0, max_err = 0;
      for (int64_t v = 0; v < want.numel(); ++v) {
        max_ref = std::max(max_ref, std::fabs(want.f32()[v]));
        max_err = std::max(max_err, std::fabs(want.f32()[v] - entries[i].logits[v]));
      }
      EXPECT_LE(max_err, 1e-5f * max_ref) << "sequence " << i << " step " << step;
    }
  }
  // Three mixable adapters through a cache of 2: each prefill group and decode round acquires each
  // of its adapters once (prefills of 5, 6, 7, 9, 17 rows: 1 + 1 + 1 + 1 + 2; a decode round: 3);
  // a decode round holds all three (beyond the capacity), and the cache trims back to 2 after it.
  const lora::AdapterCacheStats s = decoder.adapter_cache().stats();
  EXPECT_EQ(s.loads + s.hits, 6u + 3u * (steps - 1)) << "loads " << s.loads << " hits " << s.hits;
  EXPECT_GE(s.loads, 3u);
  EXPECT_EQ(s.resident, 2u);
  EXPECT_EQ(s.evictions, s.loads - s.resident);
}

TEST(MixedBatch, HookAddsNothingForRowsWithoutAdapterOrTarget) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  auto qv = test::trained_adapter(m, 4, {"q_proj", "v_proj"}, 7);
  auto copy = std::make_shared<const lora::MixableAdapter>(*qv, static_cast<int>(m.config().num_layers), Device::cpu(),
                                                           DType::F32);
  lora::MixedBatchHook hook({{copy, 1.0}, {nullptr, 1.0}, {copy, 3.0}}, 1, Device::cpu());
  EXPECT_EQ(hook.adapters(), 2u) << "one adapter at two scales is two table entries";
  const lora::LoraPair* p = qv->find(0, Target::Q);
  ASSERT_NE(p, nullptr);
  Tensor x = Tensor::empty({3, p->in});
  Rng rng(3);
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = rng.uniform(-1.0f, 1.0f);
  std::copy(x.f32(), x.f32() + p->in, x.f32() + 2 * p->in);  // rows 0 and 2: one input, two scales
  Tensor y = Tensor::zeros({3, p->out}), y_o = Tensor::zeros({3, p->out});
  const model::Linear none;
  hook.on_projection(0, Target::Q, none, x, y);
  hook.on_projection(0, Target::O, none, x, y_o);  // not adapted: untouched
  lora::LoraHook alone({{qv.get(), 3.0}});
  Tensor want = Tensor::zeros({1, p->out});
  alone.on_projection(0, Target::Q, none, x.slice_rows(2, 3), want);
  for (int64_t o = 0; o < p->out; ++o) {
    EXPECT_EQ(y.f32()[p->out + o], 0.0f) << "the base row";
    EXPECT_NEAR(y.f32()[2 * p->out + o], want.f32()[o], 1e-5f);
    EXPECT_NEAR(y.f32()[2 * p->out + o], 3.0f * y.f32()[o], 1e-5f);
  }
  for (int64_t i = 0; i < y_o.numel(); ++i) EXPECT_EQ(y_o.f32()[i], 0.0f);
}

// A prefill of many runs (one adapter at ten user scales: ten runs) takes the row kernels, and,
// with the segment road forced, lora_runs_ (a GEMM pair a run on the CPU); either way each
// sequence gets what it gets alone.
TEST(MixedBatch, PrefillOfManyAdaptersEqualsEachSequenceAlone) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto all = test::trained_adapter(m, 4, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 9);
  lora::MixedBatchHook::SegmentRoad& road = lora::MixedBatchHook::segment_road();
  const lora::MixedBatchHook::SegmentRoad saved = road;
  const int64_t prompt = road.segment_rows;
  const size_t n = road.max_segments + 2;
  for (const bool segments : {false, true}) {
    SCOPED_TRACE(segments ? "segment road" : "row kernels");
    if (segments) road.runs_rows = 0, road.many_runs_rows = 0;
    infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 64);
    infer::BatchDecoder decoder(m, cache, 2);
    std::vector<std::unique_ptr<infer::PagedSequence>> paged;
    std::vector<infer::DecodeEntry> entries(n);
    for (size_t i = 0; i < n; ++i) {
      paged.push_back(std::make_unique<infer::PagedSequence>(cache, prompt));
      entries[i].seq = paged[i].get();
      entries[i].tokens = std::span<const int32_t>(tokens.data() + i, prompt);
      entries[i].adapter = all;
      entries[i].adapter_scale = 0.25 * static_cast<double>(i + 1);
    }
    decoder.step(entries);
    road = saved;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(entries[i].error, "") << "sequence " << i;
      lora::LoraHook hook({{all.get(), entries[i].adapter_scale}});
      model::TokenBatch b{{entries[i].tokens.begin(), entries[i].tokens.end()}, 1, prompt};
      Tensor want = m.project_vocab(m.hidden_states(b, &hook).slice_rows(prompt - 1, prompt), &hook);
      float max_ref = 0, max_err = 0;
      for (int64_t v = 0; v < want.numel(); ++v) {
        max_ref = std::max(max_ref, std::fabs(want.f32()[v]));
        max_err = std::max(max_err, std::fabs(want.f32()[v] - entries[i].logits[v]));
      }
      EXPECT_LE(max_err, 1e-5f * max_ref) << "sequence " << i;
    }
  }
}
