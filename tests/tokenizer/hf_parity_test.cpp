// Exact parity with HF tokenizers on the whole corpus (tests/data/corpus, fetched by
// scripts/fetch-test-data.sh) for the four tokenizers. Reference ids: tests/fixtures/tokenizer/
// refs_*.jsonl, written by tests/reference/make_tokenizer_refs.py. Also against a second
// reference, @lenml/tokenizers (tests/data/lenml_refs/, made by fetch-test-data.sh with
// tests/tokenizer/lenml_refs.mjs; LOWRANK_LENML_REFS=dir overrides).
#include <gtest/gtest.h>

#include "parity_util.h"

namespace lowrank::tok::testing {
namespace {

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParity, WholeCorpusExact) {
  LOWRANK_REQUIRE_TEST_DATA();
  const std::string name = GetParam();
  fs::path refs = source_dir() / "tests" / "fixtures" / "tokenizer" / ("refs_" + name + ".jsonl");
  // The reference ids are committed fixtures: missing means a broken checkout.
  ASSERT_TRUE(fs::exists(refs)) << refs << " is missing (tests/reference/make_tokenizer_refs.py)";
  Tokenizer t = Tokenizer::load(tokenizer_path(name).string());
  ParityResult r = check_refs(t, refs, true);
  std::printf("[ parity ] %s: %zu/%zu docs exact, %zu with special tokens, %zu/%zu decodes\n",
              name.c_str(), r.exact, r.docs, r.special_exact, r.decode_exact, r.decode_checked);
  EXPECT_GT(r.docs, 0u);
  EXPECT_EQ(r.exact, r.docs);
}

class LenmlParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LenmlParity, WholeCorpusExact) {
  LOWRANK_REQUIRE_TEST_DATA();
  const char* env = std::getenv("LOWRANK_LENML_REFS");
  fs::path dir = env ? fs::path(env) : data_dir() / "lenml_refs";
  const std::string name = GetParam();
  fs::path refs = dir / ("refs_" + name + ".jsonl");
  if (!fs::exists(refs)) {
    if (in_ci()) FAIL() << refs << " is missing (scripts/fetch-test-data.sh makes it with node)";
    GTEST_SKIP() << refs << " is missing (scripts/fetch-test-data.sh makes it with node)";
  }
  Tokenizer t = Tokenizer::load(tokenizer_path(name).string());
  ParityResult r = check_refs(t, refs, false);
  std::printf("[ lenml  ] %s: %zu/%zu docs exact\n", name.c_str(), r.exact, r.docs);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, HfParity,
                         ::testing::Values("llama3", "qwen3", "llama2", "gpt2"));
INSTANTIATE_TEST_SUITE_P(Tokenizers, LenmlParity,
                         ::testing::Values("llama3", "qwen3", "llama2", "gpt2"));

}  // namespace
}  // namespace lowrank::tok::testing
