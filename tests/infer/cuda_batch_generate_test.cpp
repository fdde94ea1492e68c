// Batched paged decoding on the GPU against the CPU path: with f32 weights on the GPU the greedy
// tokens of generate_batch (prompts of different lengths decoded together) equal the CPU
// Generator's on every fixture model; with bf16 weights the logits of batched prefill + decode,
// teacher-forced, stay within bf16 tolerance of the CPU's, and Generator on a CUDA model (which
// decodes through the paged cache) gives the fixture's greedy tokens with two adapters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "lowrank/core/device_memory.h"
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/infer/batch_generator.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

#define REQUIRE_GPU() \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU"

class CudaBatchGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaBatchGreedy, F32EqualsCpuGenerator) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture(GetParam());
  model::Model cpu = model::Model::load(dir);
  model::Model gpu = model::Model::load(dir, Device::cuda(0), DType::F32);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", cpu.config().vocab_size)[0];
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t len : {3, 17, 6, 17, 29}) prompts.emplace_back(seq.begin(), seq.begin() + std::min<int64_t>(len, seq.size()));
  infer::GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling.greedy = true;
  infer::BatchOptions b;
  b.max_batch = 4;
  auto got = infer::generate_batch(gpu, nullptr, prompts, o, b);
  infer::Generator g(cpu, nullptr);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], g.generate(prompts[i], o)) << GetParam() << " prompt " << i;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaBatchGreedy,
                         ::testing::Values("llama", "llama_tied_bias", "llama3_rope", "mistral", "qwen2", "qwen3", "gpt2",
                                           "gemma2", "gemma3", "phi3", "phi3_longrope"));

class CudaBatchLogits : public ::testing::TestWithParam<std::string> {};

// The logits of `steps` decode steps of sequences with prompts of `prompt_lens` tokens, on the CPU
// (f32) and on the GPU (bf16): [device][step * sequence][V].
std::vector<std::vector<std::vector<float>>> cpu_and_gpu_logits(const std::string& dir,
                                                                const std::vector<int64_t>& prompt_lens) {
  std::vector<std::vector<std::vector<float>>> logits(2);
  for (int d = 0; d < 2; ++d) {
    model::Model m = d == 0 ? model::Model::load(dir) : model::Model::load(dir, Device::cuda(0), DType::BF16);
    auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
    const int64_t steps = 6;
    infer::PagedKVCache cache(m.config(), m.device(), m.weights().embed.dtype(), 16);
    infer::BatchDecoder decoder(m, cache);
    std::vector<std::unique_ptr<infer::PagedSequence>> seqs;
    for (int64_t len : prompt_lens) seqs.push_back(std::make_unique<infer::PagedSequence>(cache, len + steps));
    for (int64_t step = 0; step < steps; ++step) {
      std::vector<infer::DecodeEntry> entries(seqs.size());
      for (size_t i = 0; i < seqs.size(); ++i) {
        entries[i].seq = seqs[i].get();
        entries[i].tokens = step == 0 ? std::span<const int32_t>(seq.data() + i, prompt_lens[i])
                                      : std::span<const int32_t>(seq.data() + i + prompt_lens[i] + step - 1, 1);
      }
      decoder.step(entries);
      for (auto& e : entries) {
        EXPECT_EQ(e.error, "");
        logits[d].push_back(e.logits);
      }
    }
  }
  return logits;
}

// Relative Frobenius error of the GPU's bf16 logits against the CPU's f32 ones at every step.
void expect_close(const std::vector<std::vector<std::vector<float>>>& logits, const std::string& what) {
  ASSERT_EQ(logits[0].size(), logits[1].size());
  for (size_t r = 0; r < logits[0].size(); ++r) {
    ASSERT_EQ(logits[0][r].size(), logits[1][r].size());
    double num = 0, den = 0;
    for (size_t v = 0; v < logits[0][r].size(); ++v) {
      const double diff = double(logits[1][r][v]) - logits[0][r][v];
      num += diff * diff;
      den += double(logits[0][r][v]) * logits[0][r][v];
    }
    EXPECT_LE(std::sqrt(num / den), 3e-2) << what << " row " << r;
  }
}

TEST_P(CudaBatchLogits, Bf16WithinToleranceOfCpu) {
  REQUIRE_GPU();
  expect_close(cpu_and_gpu_logits(test::model_fixture(GetParam()), {5, 9, 5, 13}), GetParam());
}

// One sequence: its decode steps run the fused one-row kernels (Model::decode_layer) on
// Llama-family layers (q/k/v biases: qwen2), the unfused ops on the others.
TEST_P(CudaBatchLogits, OneStreamBf16WithinToleranceOfCpu) {
  REQUIRE_GPU();
  expect_close(cpu_and_gpu_logits(test::model_fixture(GetParam()), {11}), GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaBatchLogits,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma2", "gemma3", "phi3"));

// Decode steps replayed from recorded CUDA graphs (batch padded to a power of two, lengths to a
// bucket) give the logits of the same steps run op by op, step after step (the first step of a
// bucket runs eagerly, the second records, the rest replay), also after the batch shrinks. Not
// bit for bit: the padded batch's GEMMs may pick other cuBLASLt algorithms.
TEST(CudaDecodeGraphs, ReplaysEqualEagerSteps) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("qwen2");
  model::Model m = model::Model::load(dir, Device::cuda(0), DType::F32);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  const std::vector<int64_t> prompt_lens = {5, 9, 3};
  const int64_t steps = 12;
  std::vector<std::vector<std::vector<float>>> logits(2);  // [graphs off/on][step * sequence][V]
  std::vector<int64_t> replays(2);
  for (int g = 0; g < 2; ++g) {
    infer::PagedKVCache cache(m.config(), m.device(), DType::F32, 64);
    infer::BatchDecoder decoder(m, cache, infer::BatchDecoder::kDefaultDeviceAdapters, g == 1);
    std::vector<std::unique_ptr<infer::PagedSequence>> seqs;
    for (int64_t len : prompt_lens) seqs.push_back(std::make_unique<infer::PagedSequence>(cache, len + steps + 300));
    for (int64_t step = 0; step < steps; ++step) {
      if (step == 8) seqs.pop_back();  // 3 rows (bucket 4) -> 2 rows (bucket 2)
      std::vector<infer::DecodeEntry> entries(seqs.size());
      for (size_t i = 0; i < seqs.size(); ++i) {
        entries[i].seq = seqs[i].get();
        entries[i].tokens = step == 0 ? std::span<const int32_t>(seq.data() + i, prompt_lens[i])
                                      : std::span<const int32_t>(seq.data() + i + prompt_lens[i] + step - 1, 1);
      }
      decoder.step(entries);
      for (auto& e : entries) {
        ASSERT_EQ(e.error, "");
        logits[g].push_back(e.logits);
      }
    }
    replays[g] = decoder.graph_replays();
  }
  EXPECT_EQ(replays[0], 0);
  // Decode buckets 4: steps 2-7 (step 1 eager); 2: steps 9-11 (8 eager). The three prompts (5, 9, 3
  // tokens) prefill one at a time on the 16-row prefill graph: the second and third replay it.
  EXPECT_EQ(replays[1], 6 + 3 + 2);
  ASSERT_EQ(logits[0].size(), logits[1].size());
  for (size_t r = 0; r < logits[0].size(); ++r) {
    ASSERT_EQ(logits[0][r].size(), logits[1][r].size());
    double worst = 0;
    for (size_t v = 0; v < logits[0][r].size(); ++v)
      worst = std::max(worst, std::abs(double(logits[0][r][v]) - logits[1][r][v]) / std::max(1.0, std::abs(double(logits[0][r][v]))));
    EXPECT_LE(worst, 1e-4) << "row " << r;
  }
}

// Greedy steps started one step ahead (DecodeEntry::feeds_argmax) give the tokens of the same
// steps run one at a time, also where the step started ahead is not the one asked for next (a
// sequence ends; one joins, in the blocks the ended one gave back; a bucket changes), and they
// do start ahead: more replays than steps that record.
TEST(CudaDecodeGraphs, StepsStartedAheadGiveTheSameTokens) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("qwen2");
  model::Model m = model::Model::load(dir, Device::cuda(0), DType::F32);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  const std::vector<int64_t> prompt_lens = {5, 9, 3};
  const int64_t steps = 16;
  std::vector<std::vector<std::vector<int32_t>>> tokens(2);  // [ahead off/on][sequence] generated
  std::vector<int64_t> replays(2);
  for (int ahead = 0; ahead < 2; ++ahead) {
    infer::PagedKVCache cache(m.config(), m.device(), DType::F32, 64);
    infer::BatchDecoder decoder(m, cache);
    struct Live {
      std::unique_ptr<infer::PagedSequence> seq;
      std::vector<int32_t> fed;
      size_t index;
    };
    std::vector<Live> live;
    tokens[ahead].resize(prompt_lens.size() + 1);
    auto join = [&](size_t i, int64_t len) {
      live.push_back({std::make_unique<infer::PagedSequence>(cache, len + steps + 1),
                      std::vector<int32_t>(seq.begin() + i, seq.begin() + i + len), i});
    };
    for (size_t i = 0; i < prompt_lens.size(); ++i) join(i, prompt_lens[i]);
    for (int64_t step = 0; step < steps; ++step) {
      if (step == 6) live.pop_back();       // ends: the step started ahead of it is not asked for
      if (step == 7) join(3, 4);            // joins in the blocks it gave back (prefill)
      if (step == 11) live.erase(live.begin());
      std::vector<infer::DecodeEntry> entries(live.size());
      for (size_t i = 0; i < live.size(); ++i) {
        const Live& l = live[i];
        const bool first = tokens[ahead][l.index].empty();
        entries[i].seq = l.seq.get();
        entries[i].tokens = first ? std::span<const int32_t>(l.fed) : std::span<const int32_t>(&l.fed.back(), 1);
        entries[i].argmax_only = true;
        entries[i].feeds_argmax = ahead == 1 && step + 1 < steps;
      }
      decoder.step(entries);
      for (size_t i = 0; i < live.size(); ++i) {
        ASSERT_EQ(entries[i].error, "");
        ASSERT_GE(entries[i].argmax, 0);
        live[i].fed.push_back(entries[i].argmax);
        tokens[ahead][live[i].index].push_back(entries[i].argmax);
      }
    }
    replays[ahead] = decoder.graph_replays();
  }
  for (size_t i = 0; i < tokens[0].size(); ++i) {
    EXPECT_FALSE(tokens[0][i].empty());
    EXPECT_EQ(tokens[1][i], tokens[0][i]) << "sequence " << i;
  }
  EXPECT_GT(replays[1], replays[0]) << "no step was started ahead";
}

// One bf16 stream: the fused decode layers, and the lm_head with its pick in one launch
// (ops::project_argmax), the pick written into the ids of the step started ahead. Eager steps,
// replayed graphs and steps started ahead give the same tokens (every one-row step projects the
// vocabulary with that one kernel), and steps do start ahead: the caller says the last step feeds
// its pick too, so one step runs ahead that nobody asks for.
TEST(CudaDecodeGraphs, OneBf16StreamStartedAheadGivesTheSameTokens) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("qwen2");
  model::Model m = model::Model::load(dir, Device::cuda(0), DType::BF16);
  const auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  const int64_t prompt = 5, steps = 24;
  std::vector<std::vector<int32_t>> tokens(3);  // graphs off; graphs, nothing ahead; graphs and ahead
  std::vector<int64_t> replays(3);
  for (int mode = 0; mode < 3; ++mode) {
    infer::PagedKVCache cache(m.config(), m.device(), DType::BF16, 64);
    infer::BatchDecoder decoder(m, cache, infer::BatchDecoder::kDefaultDeviceAdapters, mode > 0);
    infer::PagedSequence s(cache, prompt + steps + 1);
    std::vector<int32_t> fed(seq.begin(), seq.begin() + prompt);
    for (int64_t step = 0; step < steps; ++step) {
      std::vector<infer::DecodeEntry> entries(1);
      entries[0].seq = &s;
      entries[0].tokens = step == 0 ? std::span<const int32_t>(fed) : std::span<const int32_t>(&fed.back(), 1);
      entries[0].argmax_only = true;
      entries[0].feeds_argmax = mode == 2;
      decoder.step(entries);
      ASSERT_EQ(entries[0].error, "");
      ASSERT_GE(entries[0].argmax, 0);
      fed.push_back(entries[0].argmax);
      tokens[mode].push_back(entries[0].argmax);
    }
    replays[mode] = decoder.graph_replays();
  }
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_EQ(tokens[2], tokens[0]);
  EXPECT_EQ(replays[0], 0);
  EXPECT_GT(replays[1], 0);
  EXPECT_EQ(replays[2], replays[1] + 1) << "no step was started ahead";
}

// One prompt's prefill on the base model replays a graph per padded length (DecodeGraphs::
// prefill): prompts of 5, 9 and 12 tokens share the 16-row graph (the first runs eagerly, the
// second records it). Their last rows' logits stay within f32 tolerance of the unpadded prefill
// without graphs, the keys and values they wrote carry the greedy decode that follows to the same
// tokens, and the later prompts do replay.
TEST(CudaDecodeGraphs, OnePromptPrefillsReplayPerPaddedLength) {
  REQUIRE_GPU();
  const std::string dir = test::model_fixture("qwen2");
  model::Model m = model::Model::load(dir, Device::cuda(0), DType::F32);
  const auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  const std::vector<int64_t> prompt_lens = {5, 9, 12};
  const int64_t steps = 6;
  std::vector<std::vector<std::vector<float>>> logits(2);  // [graphs off/on][prompt][V]
  std::vector<std::vector<int32_t>> tokens(2);               // greedy tokens after each prompt
  std::vector<int64_t> replays(2);
  for (int g = 0; g < 2; ++g) {
    infer::PagedKVCache cache(m.config(), m.device(), DType::F32, 64);
    infer::BatchDecoder decoder(m, cache, infer::BatchDecoder::kDefaultDeviceAdapters, g == 1);
    for (size_t p = 0; p < prompt_lens.size(); ++p) {
      infer::PagedSequence s(cache, prompt_lens[p] + steps + 1);
      std::vector<int32_t> fed(seq.begin() + p, seq.begin() + p + prompt_lens[p]);
      for (int64_t step = 0; step <= steps; ++step) {
        std::vector<infer::DecodeEntry> entries(1);
        entries[0].seq = &s;
        entries[0].tokens = step == 0 ? std::span<const int32_t>(fed) : std::span<const int32_t>(&fed.back(), 1);
        entries[0].argmax_only = step > 0;
        decoder.step(entries);
        ASSERT_EQ(entries[0].error, "");
        if (step == 0) {
          logits[g].push_back(entries[0].logits);
          ASSERT_EQ(entries[0].argmax, -1);  // logits asked for: no argmax
          const auto& l = entries[0].logits;
          fed.push_back(static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()));
        } else {
          ASSERT_GE(entries[0].argmax, 0);
          fed.push_back(entries[0].argmax);
        }
        tokens[g].push_back(fed.back());
      }
    }
    replays[g] = decoder.graph_replays();
  }
  EXPECT_EQ(replays[0], 0);
  // Decode steps: 5 replays after the first prompt (its first step runs eagerly), 6 after each of
  // the others; prefills: the second and third prompts'.
  EXPECT_EQ(replays[1], 5 + 6 + 6 + 2) << "the later prompts' prefills did not replay";
  EXPECT_EQ(tokens[1], tokens[0]);
  for (size_t p = 0; p < prompt_lens.size(); ++p) {
    ASSERT_EQ(logits[0][p].size(), logits[1][p].size());
    ASSERT_FALSE(logits[0][p].empty());
    double worst = 0;
    for (size_t v = 0; v < logits[0][p].size(); ++v)
      worst = std::max(worst, std::abs(double(logits[0][p][v]) - logits[1][p][v]) / std::max(1.0, std::abs(double(logits[0][p][v]))));
    EXPECT_LE(worst, 1e-4) << "prompt " << p;
  }
}

TEST(CudaBatchGenerate, GeneratorOnCudaWithAdaptersEqualsFixture) {
  REQUIRE_GPU();
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  const auto& c = cases.back();  // llama with adapter_a:1.0 and adapter_b:0.5
  model::Model m = model::Model::load(test::model_fixture("llama"), Device::cuda(0), DType::F32);
  lora::AdapterSet set({test::fixture("lora/generate/adapter_a") + ":1.0", test::fixture("lora/generate/adapter_b") + ":0.5"}, m);
  infer::GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling.greedy = true;
  o.eos_ids = infer::model_eos_ids(m.config());
  std::vector<int32_t> streamed;
  auto out = infer::Generator(m, set.hook()).generate(c["prompt"].get<std::vector<int32_t>>(), o,
                                                     [&](int32_t t) { streamed.push_back(t); });
  EXPECT_EQ(out, c["output_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(streamed, out);
}

}  // namespace
