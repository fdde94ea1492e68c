// Mixed-adapter batches on the GPU against the CPU: the base model and plain-LoRA adapters of
// different ranks and target sets (host adapters, paged into the decoder's GPU adapter cache of 2)
// decoded together, teacher-forced; each sequence's logits equal the CPU's decoded alone with its
// own LoraHook — f32 weights to 1e-4 relative, bf16 within 3e-2 (the bf16 logits tolerance of
// CudaBatchLogits: bf16 GEMMs and activations through every layer).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <tuple>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"
#include "trained_adapter.h"

using namespace lowrank;

namespace {

struct Seq {
  int adapter;  // -1: none, else 0 (q,v r=4), 1 (all-linear r=16), 2 (down, up r=2)
  double scale;
  int64_t prompt;
};

// `seqs` decoded together (one batch) for 5 steps after their prompts; `merged`: the decoder's
// merged copies (a batch of one adapter at one scale runs on one).
void check(DType dtype, double tol, const std::vector<Seq>& seqs, size_t merged = 0) {
  const std::string dir = test::model_fixture("llama");
  model::Model cpu = model::Model::load(dir);
  model::Model gpu = model::Model::load(dir, Device::cuda(0), dtype);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", cpu.config().vocab_size)[0];
  const std::vector<std::shared_ptr<lora::Adapter>> adapters = {
      test::trained_adapter(cpu, 4, {"q_proj", "v_proj"}, 1),
      test::trained_adapter(cpu, 16, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 2),
      test::trained_adapter(cpu, 2, {"down_proj", "up_proj"}, 3)};
  auto adapter_of = [&](const Seq& s) { return s.adapter < 0 ? nullptr : adapters[s.adapter]; };
  const int64_t steps = 5;
  infer::PagedKVCache cache(gpu.config(), gpu.device(), gpu.weights().embed.dtype(), 64);
  infer::BatchDecoder decoder(gpu, cache, 2, true, merged, /*merge_after_steps=*/0);
  std::vector<std::unique_ptr<infer::PagedSequence>> paged;
  std::vector<std::unique_ptr<lora::LoraHook>> hooks;
  std::vector<model::KVCache> refs;
  std::vector<std::vector<int32_t>> streams;
  for (size_t i = 0; i < seqs.size(); ++i) {
    streams.emplace_back(tokens.begin() + i, tokens.begin() + i + seqs[i].prompt + steps);
    paged.push_back(std::make_unique<infer::PagedSequence>(cache, seqs[i].prompt + steps));
    refs.push_back(model::KVCache::create(cpu.config(), seqs[i].prompt + steps));
    hooks.push_back(seqs[i].adapter >= 0 ? std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{
                                               {adapter_of(seqs[i]).get(), seqs[i].scale}})
                                         : nullptr);
  }
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<infer::DecodeEntry> entries(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      entries[i].seq = paged[i].get();
      entries[i].tokens = step == 0 ? std::span<const int32_t>(streams[i].data(), seqs[i].prompt)
                                    : std::span<const int32_t>(&streams[i][seqs[i].prompt + step - 1], 1);
      entries[i].adapter = adapter_of(seqs[i]);  // host f32: the decoder's cache copies it to the GPU
      entries[i].adapter_scale = seqs[i].scale;
    }
    decoder.step(entries);
    for (size_t i = 0; i < seqs.size(); ++i) {
      ASSERT_EQ(entries[i].error, "") << "sequence " << i;
      const auto n = static_cast<int64_t>(entries[i].tokens.size());
      model::TokenBatch b{{entries[i].tokens.begin(), entries[i].tokens.end()}, 1, n};
      Tensor want = cpu.project_vocab(cpu.hidden_states(b, hooks[i].get(), nullptr, &refs[i]).slice_rows(n - 1, n));
      double num = 0, den = 0;
      for (int64_t v = 0; v < want.numel(); ++v) {
        const double d = static_cast<double>(entries[i].logits[v]) - want.f32()[v];
        num += d * d;
        den += static_cast<double>(want.f32()[v]) * want.f32()[v];
      }
      EXPECT_LE(std::sqrt(num / den), tol) << dtype_name(dtype) << " sequence " << i << " step " << step;
    }
  }
  std::set<int> distinct;
  for (const Seq& sq : seqs)
    if (sq.adapter >= 0) distinct.insert(sq.adapter);
  EXPECT_EQ(decoder.adapter_cache().stats().resident, std::min<size_t>(2, distinct.size()));
  const bool one_adapter = std::all_of(seqs.begin(), seqs.end(), [&](const Seq& s) {
    return s.adapter >= 0 && s.adapter == seqs[0].adapter && s.scale == seqs[0].scale;
  });
  const lora::AdapterCacheStats s = decoder.adapter_stats();
  EXPECT_EQ(s.merged_made, merged > 0 && one_adapter ? 1u : 0u);
  if (merged > 0 && one_adapter) {
    std::set<int64_t> prompt_lengths;
    for (const Seq& sq : seqs) prompt_lengths.insert(sq.prompt);
    EXPECT_EQ(s.merged_batches, prompt_lengths.size() + (steps - 1)) << "every prefill and decode batch";
    EXPECT_GT(decoder.graph_replays(), 0) << "the merged copy's decode steps replay its graphs";
  }
}

}  // namespace

TEST(CudaMixedBatch, F32EqualsCpuAloneAndBf16WithinTolerance) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  // Prompts of 17 prefill through the segment GEMMs, shorter ones through lora_rows_.
  const std::vector<Seq> seqs = {{-1, 1, 5}, {0, 1, 7}, {1, 1, 5}, {0, 0.5, 7}, {2, 2, 9}, {1, 1, 17}, {0, 1, 17}};
  check(DType::F32, 1e-4, seqs);
  check(DType::BF16, 3e-2, seqs);
}

// One sequence alone: bf16 decode steps of one row take the fused layers (Model::decode_layer),
// the adapter's updates applied by their shrink launches and the fused ops' epilogues.
TEST(CudaMixedBatch, OneStreamWithAnAdapterWithinToleranceOfCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  check(DType::BF16, 3e-2, {{1, 1, 5}});    // every projection
  check(DType::BF16, 3e-2, {{2, 2, 9}});    // up and down only
  check(DType::BF16, 3e-2, {{0, 0.5, 7}});  // q and v, scaled
}

// A batch of one adapter on a merged copy of the model (W + s·B·A rounded once; its own decode
// graphs): within the same tolerances of the CPU's unmerged LoRA; a batch with the base model in
// it runs unmerged.
TEST(CudaMixedBatch, OneAdapterOnAMergedCopyWithinToleranceOfCpu) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  check(DType::F32, 1e-4, {{1, 1, 5}, {1, 1, 7}, {1, 1, 7}}, 1);
  check(DType::BF16, 3e-2, {{1, 1, 5}}, 1);    // one stream: the fused layers, no LoRA in them
  check(DType::BF16, 3e-2, {{0, 0.5, 7}}, 1);  // q and v, scaled
  check(DType::BF16, 3e-2, {{-1, 1, 5}, {1, 1, 5}}, 1);
}

// Mixed-adapter decode steps replayed from CUDA graphs give the logits of the same steps run op by
// op: a bucket per adapter set (rows' adapter indices are an input), a new set (a sequence
// switches adapters, one leaves) is recorded anew, and a decoder whose adapter cache is smaller
// than a step's set (its adapters are copied again every step) never replays a stale recording.
TEST(CudaMixedBatch, GraphReplaysEqualEagerSteps) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  const std::string dir = test::model_fixture("llama");
  model::Model cpu = model::Model::load(dir);
  model::Model gpu = model::Model::load(dir, Device::cuda(0), DType::F32);
  const auto tokens = train::read_token_sequences(dir + "/eval.jsonl", cpu.config().vocab_size)[0];
  auto qv = test::trained_adapter(cpu, 4, {"q_proj", "v_proj"}, 1);
  auto all = test::trained_adapter(cpu, 16, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 2);
  auto mlp = test::trained_adapter(cpu, 2, {"down_proj", "up_proj"}, 3);
  const int64_t steps = 12, prompt = 4;
  // Sequence i's adapter at a step: sequence 2 switches from `all` to `mlp` at step 7; sequence 4
  // leaves after step 9.
  auto adapter_of = [&](size_t i, int64_t step) -> std::pair<std::shared_ptr<lora::Adapter>, double> {
    switch (i) {
      case 0: return {nullptr, 1.0};
      case 1: return {qv, 1.0};
      case 2: return {step < 7 ? all : mlp, 1.0};
      case 3: return {qv, 0.5};
      default: return {all, 1.0};
    }
  };
  struct Run {
    std::vector<std::vector<float>> logits;
    int64_t replays = 0;
  };
  auto run = [&](bool graphs, size_t device_adapters) {
    Run out;
    infer::PagedKVCache cache(gpu.config(), gpu.device(), DType::F32, 64);
    infer::BatchDecoder decoder(gpu, cache, device_adapters, graphs);
    std::vector<std::unique_ptr<infer::PagedSequence>> paged;
    for (int i = 0; i < 5; ++i) paged.push_back(std::make_unique<infer::PagedSequence>(cache, prompt + steps));
    for (int64_t step = 0; step < steps; ++step) {
      const size_t live = step < 10 ? 5 : 4;
      std::vector<infer::DecodeEntry> entries(live);
      for (size_t i = 0; i < live; ++i) {
        entries[i].seq = paged[i].get();
        entries[i].tokens = step == 0 ? std::span<const int32_t>(tokens.data() + i, prompt)
                                      : std::span<const int32_t>(tokens.data() + i + prompt + step - 1, 1);
        std::tie(entries[i].adapter, entries[i].adapter_scale) = adapter_of(i, step);
      }
      decoder.step(entries);
      for (auto& e : entries) {
        EXPECT_EQ(e.error, "");
        out.logits.push_back(e.logits);
      }
    }
    out.replays = decoder.graph_replays();
    return out;
  };
  const Run eager = run(false, 64), graphed = run(true, 64), small_cache = run(true, 2);
  EXPECT_EQ(eager.replays, 0);
  // Buckets: steps 1-6 (8 rows, set A; step 1 eager, 2 records), 7-9 (set B), 10-11 (4 rows, set B).
  EXPECT_EQ(graphed.replays, 5 + 2 + 1);
  // A cache of 2: set A (2 adapters) stays resident and replays; set B's 3 adapters are evicted and
  // copied anew every step (new objects, maybe at the old addresses): never replayed; the last
  // bucket (2 adapters) replays once.
  EXPECT_EQ(small_cache.replays, 5 + 0 + 1);
  for (const Run* r : {&graphed, &small_cache}) {
    ASSERT_EQ(r->logits.size(), eager.logits.size());
    for (size_t k = 0; k < eager.logits.size(); ++k) {
      ASSERT_EQ(r->logits[k].size(), eager.logits[k].size());
      double worst = 0;
      for (size_t v = 0; v < eager.logits[k].size(); ++v)
        worst = std::max(worst, std::abs(double(r->logits[k][v]) - eager.logits[k][v]) /
                                    std::max(1.0, std::abs(double(eager.logits[k][v]))));
      EXPECT_LE(worst, 1e-4) << "row " << k;
    }
  }
}
