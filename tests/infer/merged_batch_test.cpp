// Batches of one adapter on a merged copy of the model (BatchDecoder's merged_adapters), on the
// CPU: a copy merged from the adapter's device copy holds the weights lora::merge_adapter writes,
// so its logits equal, bit for bit, those of a base decoder over a merged model; a batch that
// mixes in another adapter or the base model runs unmerged (each sequence as its own LoraHook
// gives it); the base model's weights are untouched; copies beyond the capacity, and copies of
// adapters that are gone, are dropped; by default a copy is made only after decode steps alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "lowrank/core/rng.h"
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/merge.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"
#include "trained_adapter.h"

using namespace lowrank;

namespace {

const std::vector<std::string> kAllLinear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// Sequences fed together step by step: each entry's tokens (its prompt, then one token a step).
struct Fed {
  std::vector<std::unique_ptr<infer::PagedSequence>> paged;
  std::vector<std::vector<int32_t>> streams;
  std::vector<int64_t> prompts;
};

Fed start(infer::PagedKVCache& cache, const std::vector<int32_t>& tokens, const std::vector<int64_t>& prompts,
          int64_t steps) {
  Fed r;
  r.prompts = prompts;
  for (size_t i = 0; i < prompts.size(); ++i) {
    r.streams.emplace_back(tokens.begin() + 3 * i, tokens.begin() + 3 * i + prompts[i] + steps);
    r.paged.push_back(std::make_unique<infer::PagedSequence>(cache, prompts[i] + steps));
  }
  return r;
}

std::vector<infer::DecodeEntry> entries_at(Fed& r, int64_t step, const std::vector<std::shared_ptr<lora::Adapter>>& adapters,
                                           const std::vector<double>& scales) {
  std::vector<infer::DecodeEntry> entries(r.paged.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    entries[i].seq = r.paged[i].get();
    entries[i].tokens = step == 0 ? std::span<const int32_t>(r.streams[i].data(), r.prompts[i])
                                  : std::span<const int32_t>(&r.streams[i][r.prompts[i] + step - 1], 1);
    entries[i].adapter = adapters[i];
    entries[i].adapter_scale = scales[i];
  }
  return entries;
}

}  // namespace

TEST(MergedBatch, OneAdapterBatchEqualsTheMergedModelBitForBit) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  model::Model merged = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto all = test::trained_adapter(m, 8, kAllLinear, 1);
  const double scale = 0.7;
  lora::merge_adapter(merged, *all, scale);
  const Tensor q0 = m.weights().layers[0].q.weight.clone();
  const int64_t steps = 6;
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 32), ref_cache(m.config(), Device::cpu(), DType::F32, 32);
  infer::BatchDecoder decoder(m, cache, 2, true, /*merged_adapters=*/1, /*merge_after_steps=*/0);
  infer::BatchDecoder reference(merged, ref_cache);
  Fed run = start(cache, tokens, {5, 7, 5}, steps), ref = start(ref_cache, tokens, {5, 7, 5}, steps);
  for (int64_t step = 0; step < steps; ++step) {
    auto got = entries_at(run, step, {all, all, all}, {scale, scale, scale});
    auto want = entries_at(ref, step, {nullptr, nullptr, nullptr}, {1, 1, 1});
    decoder.step(got);
    reference.step(want);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].error, "") << "sequence " << i;
      ASSERT_EQ(got[i].logits.size(), want[i].logits.size());
      for (size_t v = 0; v < got[i].logits.size(); ++v)
        ASSERT_EQ(got[i].logits[v], want[i].logits[v]) << "sequence " << i << " step " << step << " logit " << v;
    }
  }
  const lora::AdapterCacheStats s = decoder.adapter_stats();
  EXPECT_EQ(s.merged_batches, 2u + (steps - 1)) << "prefills of 5 and 7 rows, then one decode batch a step";
  EXPECT_EQ(s.merged_made, 1u);
  EXPECT_EQ(s.merged_resident, 1u);
  const Tensor& q = m.weights().layers[0].q.weight;
  EXPECT_TRUE(std::equal(q.f32(), q.f32() + q.numel(), q0.f32())) << "the base model's weights are untouched";
}

TEST(MergedBatch, MixedBatchesRunUnmergedAndEqualEachSequenceAlone) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto all = test::trained_adapter(m, 8, kAllLinear, 2);
  auto qv = test::trained_adapter(m, 4, {"q_proj", "v_proj"}, 3);
  // Batches: {all, base}, {all at two scales}, {all, qv}: none is one adapter at one scale.
  const std::vector<std::vector<std::shared_ptr<lora::Adapter>>> sets = {{all, nullptr}, {all, all}, {all, qv}};
  const std::vector<std::vector<double>> scales = {{1.0, 1.0}, {1.0, 0.5}, {1.0, 1.0}};
  const int64_t steps = 4;
  for (size_t k = 0; k < sets.size(); ++k) {
    infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 32);
    infer::BatchDecoder decoder(m, cache, 2, true, /*merged_adapters=*/2, /*merge_after_steps=*/0);
    Fed run = start(cache, tokens, {6, 6}, steps);
    std::vector<model::KVCache> refs;
    std::vector<std::unique_ptr<lora::LoraHook>> hooks;
    for (size_t i = 0; i < 2; ++i) {
      refs.push_back(model::KVCache::create(m.config(), 6 + steps));
      hooks.push_back(sets[k][i] ? std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{
                                       {sets[k][i].get(), scales[k][i]}})
                                 : nullptr);
    }
    for (int64_t step = 0; step < steps; ++step) {
      auto entries = entries_at(run, step, sets[k], scales[k]);
      decoder.step(entries);
      for (size_t i = 0; i < entries.size(); ++i) {
        ASSERT_EQ(entries[i].error, "") << "set " << k << " sequence " << i;
        const auto n = static_cast<int64_t>(entries[i].tokens.size());
        model::TokenBatch b{{entries[i].tokens.begin(), entries[i].tokens.end()}, 1, n};
        Tensor want = m.project_vocab(m.hidden_states(b, hooks[i].get(), nullptr, &refs[i]).slice_rows(n - 1, n),
                                      hooks[i].get());
        float max_ref = 0, max_err = 0;
        for (int64_t v = 0; v < want.numel(); ++v) {
          max_ref = std::max(max_ref, std::fabs(want.f32()[v]));
          max_err = std::max(max_err, std::fabs(want.f32()[v] - entries[i].logits[v]));
        }
        EXPECT_LE(max_err, 1e-5f * max_ref) << "set " << k << " sequence " << i << " step " << step;
      }
    }
    EXPECT_EQ(decoder.adapter_stats().merged_batches, 0u) << "set " << k;
    EXPECT_EQ(decoder.adapter_stats().merged_made, 0u) << "set " << k;
  }
}

TEST(MergedBatch, CopiesBeyondTheCapacityAndOfAdaptersThatAreGoneAreDropped) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto a = test::trained_adapter(m, 4, {"q_proj", "v_proj"}, 4);
  auto b = test::trained_adapter(m, 4, {"down_proj"}, 5);
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 64);
  infer::BatchDecoder decoder(m, cache, 2, true, /*merged_adapters=*/1, /*merge_after_steps=*/0);
  auto one = [&](const std::shared_ptr<lora::Adapter>& adapter, int64_t steps) {
    Fed run = start(cache, tokens, {4}, steps);
    for (int64_t step = 0; step < steps; ++step) {
      auto entries = entries_at(run, step, {adapter}, {1.0});
      decoder.step(entries);
      ASSERT_EQ(entries[0].error, "");
    }
  };
  one(a, 2);
  one(b, 2);
  one(a, 2);  // a was dropped for b: merged again
  lora::AdapterCacheStats s = decoder.adapter_stats();
  EXPECT_EQ(s.merged_made, 3u);
  EXPECT_EQ(s.merged_resident, 1u);
  EXPECT_EQ(s.merged_batches, 6u);
  a.reset();  // unloaded: its copy goes at the next step
  one(nullptr, 1);
  s = decoder.adapter_stats();
  EXPECT_EQ(s.merged_resident, 0u);
  EXPECT_EQ(s.merged_batches, 6u) << "the base model's batch is not merged";
}

TEST(MergedBatch, ACopyIsMadeAfterDecodeStepsAlone) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  auto a = test::trained_adapter(m, 4, {"q_proj", "v_proj"}, 6);
  auto b = test::trained_adapter(m, 4, {"down_proj"}, 7);
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 64);
  infer::BatchDecoder decoder(m, cache, 2, true, /*merged_adapters=*/1, /*merge_after_steps=*/3);
  // a and b together, then b alone, then a alone: only a's third decode step alone makes a copy.
  Fed both = start(cache, tokens, {4, 4}, 4);
  for (int64_t step = 0; step < 4; ++step) {
    auto entries = entries_at(both, step, {a, b}, {1.0, 1.0});
    decoder.step(entries);
  }
  EXPECT_EQ(decoder.adapter_stats().merged_made, 0u) << "mixed batches never merge";
  Fed alone = start(cache, tokens, {5}, 6);
  for (int64_t step = 0; step < 6; ++step) {
    auto entries = entries_at(alone, step, {a}, {1.0});
    decoder.step(entries);
    ASSERT_EQ(entries[0].error, "");
    // step 0: a prefill alone (not counted); steps 1, 2: alone but unmerged; 3: the copy is made.
    EXPECT_EQ(decoder.adapter_stats().merged_made, step >= 3 ? 1u : 0u) << "step " << step;
    EXPECT_EQ(decoder.adapter_stats().merged_batches, step >= 3 ? static_cast<uint64_t>(step - 2) : 0u) << "step " << step;
  }
}
