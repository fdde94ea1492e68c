// Forward parity with transformers: logits and losses of every fixture model (made by
// tests/reference/make_fixtures.py in float64) must match.
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/model.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

std::vector<std::vector<int32_t>> read_sequences(const std::string& path) {
  std::vector<std::vector<int32_t>> out;
  std::string text = io::read_file(path);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(nlohmann::json::parse(text.substr(start, end - start))["input_ids"].get<std::vector<int32_t>>());
    start = end + 1;
  }
  return out;
}

class ForwardParity : public ::testing::TestWithParam<std::string> {};

TEST_P(ForwardParity, LogitsAndLossMatchTransformers) {
  const std::string dir = test::model_fixture(GetParam());
  model::Model m = model::Model::load(dir);
  auto expected = io::read_json(dir + "/expected.json");
  auto ref = io::SafetensorsFile::open(dir + "/expected_logits.safetensors");
  auto seqs = read_sequences(dir + "/eval.jsonl");
  ASSERT_EQ(seqs.size(), expected["sequences"].size());
  double total = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    model::TokenBatch b{seqs[i], 1, static_cast<int64_t>(seqs[i].size())};
    Tensor logits = m.logits(b);
    Tensor want = ref.get("logits." + std::to_string(i)).to(DType::F32);
    ASSERT_EQ(logits.shape(), want.shape());
    float max_ref = 0, max_err = 0;
    for (int64_t j = 0; j < want.numel(); ++j) {
      max_ref = std::max(max_ref, std::fabs(want.f32()[j]));
      max_err = std::max(max_err, std::fabs(want.f32()[j] - logits.f32()[j]));
    }
    EXPECT_LE(max_err, 1e-4f * max_ref) << GetParam() << " sequence " << i << " max_ref " << max_ref;
    int64_t n = 0;
    double nll = model::sequence_nll(m, seqs[i], &n);
    EXPECT_EQ(n, expected["sequences"][i]["tokens"].get<int64_t>());
    if (n > 0) {
      const double want_loss = expected["sequences"][i]["loss"].get<double>();
      EXPECT_NEAR(nll / n, want_loss, 1e-5 * want_loss) << GetParam() << " sequence " << i;
    }
    total += nll;
    tokens += n;
  }
  const double want = expected["loss"].get<double>();
  EXPECT_NEAR(total / tokens, want, 1e-5 * want);
}

class RopeParity : public ::testing::TestWithParam<std::string> {};

TEST_P(RopeParity, FrequenciesMatchTransformers) {
  const std::string dir = test::model_fixture(GetParam());
  auto config = model::ModelConfig::load(dir);
  auto ref = io::SafetensorsFile::open(dir + "/expected_logits.safetensors");
  Tensor inv = ref.get("inv_freq");
  auto f = model::rope_frequencies(config);
  ASSERT_EQ(static_cast<int64_t>(f.inv_freq.size()), inv.numel());
  for (int64_t i = 0; i < inv.numel(); ++i)
    EXPECT_NEAR(f.inv_freq[i], inv.f32()[i], 1e-6 * inv.f32()[i] + 1e-12) << GetParam() << " freq " << i;
  EXPECT_NEAR(f.attention_scaling, ref.get("attention_scaling").f32()[0], 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ForwardParity,
                         ::testing::Values("llama", "llama_tied_bias", "llama3_rope", "llama_bf16", "mistral",
                                           "qwen2", "qwen3", "gpt2", "gemma2", "gemma3", "phi3", "phi3_longrope"));
// GPT-2 has learned positions, no RoPE; Gemma 3's rotary module keeps one table per layer type
// (no "inv_freq" in its fixture: its logits test both).
INSTANTIATE_TEST_SUITE_P(Fixtures, RopeParity,
                         ::testing::Values("llama", "llama_tied_bias", "llama3_rope", "mistral", "qwen2", "qwen3",
                                           "gemma2", "phi3", "phi3_longrope"));

}  // namespace
