// Batched decoding over the paged KV cache on the CPU (the reference for the CUDA path): the paged
// attention op against the fused attention, logits of batched prefill + decode against the
// one-sequence KVCache path, greedy generate_batch against Generator (adapters, LongRoPE), the
// vocabulary projection with its greedy pick, and the pool's bookkeeping.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "lowrank/infer/batch_decoder.h"
#include "lowrank/infer/batch_generator.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/sequences.h"
#include "random_tensor.h"
#include "test_paths.h"

using namespace lowrank;
using test::random_tensor;

namespace {

// Sequences of lengths `lens` written into shuffled blocks of a pool; paged_attention of each
// sequence's last query must equal the last row of the fused causal attention over the sequence.
void check_paged_against_fused(const std::vector<int>& lens, int64_t H, int64_t KV, int64_t hd, int64_t window,
                               float softcap) {
  const int64_t bs = 16, B = static_cast<int64_t>(lens.size());
  int64_t blocks = 0, max_len = 0;
  for (int len : lens) {
    blocks += (len + bs - 1) / bs;
    max_len = std::max<int64_t>(max_len, len);
  }
  blocks += 3;  // spare blocks, never read
  std::vector<int32_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(42));
  Tensor k_pool = random_tensor({blocks * bs, KV * hd}, 1);
  Tensor v_pool = random_tensor({blocks * bs, KV * hd}, 2);
  const int64_t width = (max_len + bs - 1) / bs;
  std::vector<int32_t> tables(B * width, 0), lens_v(lens.begin(), lens.end());
  Tensor q_last = Tensor::empty({B, H * hd});
  std::vector<Tensor> want;
  size_t next_block = 0;
  const ops::AttentionShape shape{1, 0, H, KV, hd, window, 1.0f / std::sqrt(float(hd)), softcap};
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = lens[b];
    for (int64_t i = 0; i < (len + bs - 1) / bs; ++i) tables[b * width + i] = order[next_block++];
    Tensor q = random_tensor({len, H * hd}, 10 + b), k = random_tensor({len, KV * hd}, 20 + b),
           v = random_tensor({len, KV * hd}, 30 + b);
    std::vector<int32_t> slots(len);
    for (int64_t t = 0; t < len; ++t) slots[t] = tables[b * width + t / bs] * bs + t % bs;
    ops::paged_kv_write_(k_pool, v_pool, k, v, Tensor::from_ints(slots));
    ops::AttentionShape s = shape;
    s.seq = len;
    want.push_back(ops::attention(q, k, v, s).slice_rows(len - 1, len));
    std::copy(q.f32() + (len - 1) * H * hd, q.f32() + len * H * hd, q_last.f32() + b * H * hd);
  }
  Tensor got = ops::paged_attention(q_last, k_pool, v_pool, Tensor::from_ints(tables).reshape({B, width}),
                                    Tensor::from_ints(lens_v), bs, max_len, shape);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < H * hd; ++i)
      ASSERT_NEAR(got.f32()[b * H * hd + i], want[b].f32()[i], 1e-5) << "sequence " << b << " element " << i;
}

TEST(PagedAttention, EqualsFusedAttentionOnOddLengthsGqaWindowsSoftcap) {
  check_paged_against_fused({1, 7, 16, 17, 40}, 4, 2, 8, 0, 0.0f);
  check_paged_against_fused({3, 33, 5}, 6, 1, 16, 0, 0.0f);      // MQA
  check_paged_against_fused({30, 9, 50}, 4, 4, 8, 8, 0.0f);      // window shorter than most lengths
  check_paged_against_fused({12, 25}, 4, 2, 8, 0, 0.5f);         // soft-capping that bites
}

TEST(PagedAttention, BadArgumentsAreRefused) {
  Tensor pool = Tensor::zeros({32, 8});
  Tensor q = Tensor::zeros({1, 8});
  const ops::AttentionShape s{1, 0, 1, 1, 8, 0, 1.0f, 0.0f};
  // longer than its one block
  EXPECT_ANY_THROW(
      ops::paged_attention(q, pool, pool, Tensor::from_ints({0}).reshape({1, 1}), Tensor::from_ints({17}), 16, 17, s));
  EXPECT_ANY_THROW(ops::paged_kv_write_(pool, pool, q, q, Tensor::from_ints({32})));  // slot outside the pool
}

TEST(ArgmaxRows, FirstMaximumOfEachRow) {
  Tensor x = Tensor::from_vector({1, 3, 3, 0, -1, -2, -1, -5}, {2, 4});
  const Tensor idx = ops::argmax_rows(x);
  EXPECT_EQ(std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + 2), (std::vector<int32_t>{1, 0}));
}

// The vocabulary projection with its pick: the logits of matmul_nt, the pick of argmax_rows (the
// first of tied maxima), written in place into a slice of a larger buffer (a decode graph's ids).
TEST(ProjectArgmax, PicksTheFirstMaximumIntoTheIdsInPlace) {
  const Tensor x = random_tensor({2, 12}, 5);
  Tensor w = random_tensor({9, 12}, 6);
  for (int64_t r : {3, 7})  // two rows equal to x's second row: a tie for that row's maximum
    std::copy_n(x.f32() + 12, 12, w.f32() + r * 12);
  Tensor buffer = Tensor::from_ints({-1, -1, 42});
  Tensor ids = buffer.slice_rows(0, 2);
  const Tensor y = ops::project_argmax(x, w, ids);
  Tensor want = Tensor::empty({2, 9});
  ops::matmul_nt(x, w, want);
  for (int64_t i = 0; i < want.numel(); ++i) EXPECT_EQ(y.f32()[i], want.f32()[i]);
  const Tensor picks = ops::argmax_rows(want);
  EXPECT_EQ(buffer.data<int32_t>()[0], picks.data<int32_t>()[0]);
  EXPECT_EQ(buffer.data<int32_t>()[1], 3);
  EXPECT_EQ(buffer.data<int32_t>()[2], 42);  // past the slice: untouched
  Tensor short_ids = Tensor::from_ints({0});
  EXPECT_ANY_THROW(ops::project_argmax(x, w, short_ids));  // one id for two rows
}

// Model::project_vocab's pick is the argmax of the logits it returns, also where the logits change
// after the lm_head (a soft-cap: the pick is taken after it).
TEST(ProjectArgmax, ModelPickIsTheArgmaxOfItsLogits) {
  for (const std::string name : {"llama", "gemma2"}) {
    SCOPED_TRACE(name);
    model::Model m = model::Model::load(test::model_fixture(name));
    const Tensor h = random_tensor({3, m.config().hidden_size}, 8);
    Tensor picks = Tensor::empty({3}, DType::I32);
    const Tensor y = m.project_vocab(h, nullptr, &picks);
    const Tensor plain = m.project_vocab(h);
    ASSERT_EQ(y.numel(), plain.numel());
    for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.f32()[i], plain.f32()[i]);
    const Tensor want = ops::argmax_rows(y);
    for (int64_t r = 0; r < 3; ++r) EXPECT_EQ(picks.data<int32_t>()[r], want.data<int32_t>()[r]);
  }
}

TEST(PagedKVCache, BlocksAreReservedAndReturned) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 5);
  EXPECT_EQ(cache.k(0).dim(0), 5 * 16);
  {
    infer::PagedSequence a(cache, 33);  // 3 blocks
    EXPECT_EQ(cache.free_blocks(), 2);
    try {
      infer::PagedSequence b(cache, 40);
      ADD_FAILURE() << "a full pool must refuse";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
    }
    EXPECT_EQ(cache.free_blocks(), 2);
  }
  EXPECT_EQ(cache.free_blocks(), 5);
}

// Logits of prompts of different lengths prefilled and decoded together equal the one-sequence
// KVCache path (Model::hidden_states with a KVCache) step by step, teacher-forced.
class BatchDecoderParity : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchDecoderParity, LogitsEqualOneSequenceKVCache) {
  const std::string dir = test::model_fixture(GetParam());
  model::Model m = model::Model::load(dir);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  ASSERT_GE(seq.size(), 24u);
  const std::vector<int64_t> prompt_lens = {5, 9, 5, 13};  // two of one length: a batched prefill
  const int64_t steps = 8;
  infer::PagedKVCache cache(m.config(), Device::cpu(), DType::F32, 16);
  infer::BatchDecoder decoder(m, cache);
  std::vector<std::unique_ptr<infer::PagedSequence>> seqs;
  std::vector<std::vector<int32_t>> streams;
  std::vector<model::KVCache> refs;
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    std::vector<int32_t> s(seq.begin() + i, seq.begin() + i + prompt_lens[i] + steps);
    streams.push_back(s);
    seqs.push_back(std::make_unique<infer::PagedSequence>(cache, prompt_lens[i] + steps));
    refs.push_back(model::KVCache::create(m.config(), prompt_lens[i] + steps));
  }
  for (int64_t step = 0; step <= steps - 1; ++step) {
    std::vector<infer::DecodeEntry> entries(seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      entries[i].seq = seqs[i].get();
      entries[i].tokens = step == 0 ? std::span<const int32_t>(streams[i].data(), prompt_lens[i])
                                    : std::span<const int32_t>(&streams[i][prompt_lens[i] + step - 1], 1);
    }
    decoder.step(entries);
    for (size_t i = 0; i < seqs.size(); ++i) {
      ASSERT_EQ(entries[i].error, "");
      const auto n = static_cast<int64_t>(entries[i].tokens.size());
      model::TokenBatch b{{entries[i].tokens.begin(), entries[i].tokens.end()}, 1, n};
      Tensor h = m.hidden_states(b, nullptr, nullptr, &refs[i]);
      Tensor want = m.project_vocab(h.slice_rows(n - 1, n));
      float max_ref = 0, max_err = 0;
      for (int64_t v = 0; v < want.numel(); ++v) {
        max_ref = std::max(max_ref, std::fabs(want.f32()[v]));
        max_err = std::max(max_err, std::fabs(want.f32()[v] - entries[i].logits[v]));
      }
      EXPECT_LE(max_err, 1e-5f * max_ref) << GetParam() << " sequence " << i << " step " << step;
      EXPECT_EQ(seqs[i]->length(), prompt_lens[i] + step);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchDecoderParity,
                         ::testing::Values("llama", "mistral", "qwen3", "gpt2", "qwen2", "gemma2", "gemma3", "phi3"));

// generate_batch's greedy tokens equal Generator's for every prompt (different lengths, batched
// together, fewer slots than prompts so that finished sequences make room).
class BatchGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchGreedy, EqualsGeneratorPerPrompt) {
  const std::string dir = test::model_fixture(GetParam());
  model::Model m = model::Model::load(dir);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t len : {3, 11, 6, 11, 20}) prompts.emplace_back(seq.begin(), seq.begin() + len);
  infer::GenerateOptions o;
  o.max_new_tokens = 10;
  o.sampling.greedy = true;
  o.eos_ids = infer::model_eos_ids(m.config());
  infer::BatchOptions b;
  b.max_batch = 3;
  auto got = infer::generate_batch(m, nullptr, prompts, o, b);
  ASSERT_EQ(got.size(), prompts.size());
  infer::Generator g(m, nullptr);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], g.generate(prompts[i], o)) << GetParam() << " prompt " << i;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchGreedy,
                         ::testing::Values("llama", "mistral", "qwen3", "gpt2", "qwen2", "gemma2", "gemma3", "phi3",
                                           "phi3_longrope"));

TEST(BatchGenerate, AdaptersSamplingAndLongRopeEqualGenerator) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::AdapterSet set({test::fixture("lora/generate/adapter_a") + ":1.0", test::fixture("lora/generate/adapter_b") + ":0.5"}, m);
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& c : cases) prompts.push_back(c["prompt"].get<std::vector<int32_t>>());
  infer::GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling.seed = 5;
  o.sampling.temperature = 1.3;
  o.sampling.top_k = 20;
  o.sampling.repetition_penalty = 1.2;
  o.eos_ids = infer::model_eos_ids(m.config());
  auto got = infer::generate_batch(m, set.hook(), prompts, o);
  infer::Generator g(m, set.hook());
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], g.generate(prompts[i], o)) << "prompt " << i;

  // phi3_longrope switches to its long factors past 32 positions: a prompt of 28 crosses it while
  // decoding, one of 40 starts past it, one of 10 never reaches it.
  model::Model phi = model::Model::load(test::model_fixture("phi3_longrope"));
  auto seq = train::read_token_sequences(test::model_fixture("phi3_longrope") + "/eval.jsonl", phi.config().vocab_size)[0];
  ASSERT_GE(seq.size(), 40u);
  std::vector<std::vector<int32_t>> lp;
  for (int64_t len : {28, 40, 10}) lp.emplace_back(seq.begin(), seq.begin() + len);
  infer::GenerateOptions greedy;
  greedy.max_new_tokens = 10;
  greedy.sampling.greedy = true;
  auto phi_got = infer::generate_batch(phi, nullptr, lp, greedy);
  infer::Generator pg(phi, nullptr);
  for (size_t i = 0; i < lp.size(); ++i) EXPECT_EQ(phi_got[i], pg.generate(lp[i], greedy)) << "longrope prompt " << i;
}

TEST(BatchGenerate, BadPromptsAreErrorsNamingThePrompt) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  infer::GenerateOptions o;
  o.max_new_tokens = 4;
  auto expect_error = [&](const std::vector<std::vector<int32_t>>& prompts, const std::string& fragment) {
    try {
      infer::generate_batch(m, nullptr, prompts, o);
      ADD_FAILURE() << "expected an error with " << fragment;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error({{1, 2}, {}}, "prompt 2: the prompt is empty");
  expect_error({{1, 2}, {1, 999999}}, "prompt 2: prompt token id 999999");
  expect_error({std::vector<int32_t>(200, 3)}, "context window is 128");
  infer::BatchOptions zero;
  zero.max_batch = 0;
  EXPECT_THROW(infer::generate_batch(m, nullptr, {{1}}, o, zero), Error);
}

}  // namespace
