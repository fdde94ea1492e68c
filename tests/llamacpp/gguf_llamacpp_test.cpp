// GGUF files written by `lowrank gguf`, run by llama.cpp itself: every fixture family's logits equal
// transformers' reference logits, every LoRA fixture's eval loss equals PEFT's, the bundled model
// decodes greedily as `lowrank generate` does, and llama.cpp splits text as our tokenizer (= HF's).
#include <gtest/gtest.h>

#include <cmath>

#include "io/io_test_helpers.h"
#include "llamacpp/llamacpp.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/config.h"
#include "lowrank/model/gguf_export.h"
#include "lowrank/tokenizer/tokenizer.h"
#include "lowrank/train/sequences.h"

#include <algorithm>
#include <filesystem>
#include <set>

using namespace lowrank;
using io::testing::ScratchDir;

namespace {

std::vector<std::vector<int32_t>> eval_sequences(const std::string& model_dir, int64_t vocab) {
  std::vector<std::vector<int32_t>> out;
  for (auto& s : train::read_token_sequences(model_dir + "/eval.jsonl", vocab))
    if (!s.empty()) out.push_back(s);
  return out;
}

// `model_dir` as GGUF (with made-up tokens when it has no tokenizer) in `tmp`; returns the path.
std::string gguf_of(const std::string& model_dir, const ScratchDir& tmp, const std::string& flags = "--outtype f32") {
  const auto config = model::ModelConfig::load(model_dir);
  const std::string dir = io::file_exists(model_dir + "/tokenizer.json")
                              ? model_dir
                              : test::with_made_up_tokenizer(model_dir, tmp.file("model"), config.vocab_size);
  const std::string out = tmp.file("model.gguf");
  const auto r = test::run_cli("gguf --model " + dir + " --out " + out + " " + flags);
  EXPECT_EQ(r.code, 0) << r.err;
  return out;
}

class LlamaCppModelParity : public ::testing::TestWithParam<const char*> {};

TEST_P(LlamaCppModelParity, LogitsEqualTransformers) {
  LOWRANK_REQUIRE_LLAMACPP();
  const std::string name = GetParam(), dir = test::model_fixture(name);
  const auto config = model::ModelConfig::load(dir);
  ScratchDir tmp;
  const std::string gguf = gguf_of(dir, tmp);
  const auto seqs = eval_sequences(dir, config.vocab_size);
  const auto got = test::run_llamacpp({{"model", gguf}, {"context", config.max_position_embeddings}, {"logits", seqs}});
  // Llama-architecture files have no sliding window in llama.cpp: positions inside it agree.
  int64_t window = 0;
  if (model::gguf_arch_name(config) == "llama")
    for (int64_t w : config.sliding_window) window = std::max(window, w);
  const auto ref = io::SafetensorsFile::open(dir + "/expected_logits.safetensors");
  size_t seq_index = 0, compared = 0;
  for (size_t i = 0; seq_index < seqs.size(); ++i) {
    const std::string key = "logits." + std::to_string(i);
    if (!ref.contains(key)) continue;
    const Tensor want = ref.get(key).to(DType::F32);
    if (want.numel() == 0) continue;
    const auto& rows = got["logits"][seq_index++];
    ASSERT_EQ(static_cast<int64_t>(rows.size()), want.dim(0)) << name;
    // LongRoPE: transformers takes the long factors for a sequence longer than the original
    // context, llama.cpp by its context size (padded to 256, so always here): compare those.
    if (config.rope.type == "longrope" && want.dim(0) <= config.rope.original_max_position_embeddings) continue;
    const int64_t positions = window > 0 ? std::min<int64_t>(window, want.dim(0)) : want.dim(0);
    float max_ref = 0, max_err = 0;
    for (int64_t p = 0; p < positions; ++p)
      for (int64_t v = 0; v < want.dim(1); ++v) {
        const float w = want.f32()[p * want.dim(1) + v];
        max_ref = std::max(max_ref, std::fabs(w));
        max_err = std::max(max_err, std::fabs(w - rows[p][v].get<float>()));
      }
    // llama.cpp's CPU GELU reads a table of f16 values (ggml-cpu/vec.h, GGML_GELU_FP16): ~1e-3.
    const bool gelu = config.activation == model::Activation::GeluTanh || config.activation == model::Activation::GeluErf;
    EXPECT_LE(max_err, (gelu ? 2e-3f : 1e-4f) * max_ref) << name << " sequence " << i << " (" << positions << " positions)";
    std::printf("[ llama.cpp ] %s sequence %zu: max |error| %.3g of max |logit| %.3g\n", name.c_str(), i, max_err, max_ref);
    ++compared;
  }
  EXPECT_GT(compared, 0u) << name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LlamaCppModelParity,
                         ::testing::Values("llama", "llama_tied_bias", "llama3_rope", "llama_bf16", "mistral", "qwen2",
                                           "qwen3", "gemma2", "gemma3", "phi3", "phi3_longrope", "gpt2"));

}  // namespace

namespace {

// A PEFT fixture: as a llama.cpp LoRA file next to the base model's GGUF, or (what a LoRA file
// cannot hold) refused with `refusal` in the message and merged into the model instead.
struct LoraCase {
  const char* name;
  const char* refusal;        // nullptr: written as a LoRA file
  const char* merge_refusal;  // what refuses the merged model too (nullptr: none)
};

class LlamaCppLoraParity : public ::testing::TestWithParam<LoraCase> {};

TEST_P(LlamaCppLoraParity, EvalLossEqualsPefts) {
  LOWRANK_REQUIRE_LLAMACPP();
  const LoraCase c = GetParam();
  const std::string dir = test::fixture(std::string("lora/") + c.name);
  const auto expected = io::read_json(dir + "/expected.json");
  const std::string base = test::model_fixture(expected["base"].get<std::string>());
  const auto config = model::ModelConfig::load(base);
  ScratchDir tmp;
  const std::string model_dir = test::with_made_up_tokenizer(base, tmp.file("model"), config.vocab_size);
  nlohmann::json request = {{"context", config.max_position_embeddings},
                            {"logits", eval_sequences(base, config.vocab_size)}};
  const std::string lora = tmp.file("lora.gguf");
  const auto as_lora = test::run_cli("gguf --model " + model_dir + " --adapter " + dir + "/adapter --out " + lora);
  if (!c.refusal) {
    ASSERT_EQ(as_lora.code, 0) << as_lora.err;
    const auto r = test::run_cli("gguf --model " + model_dir + " --out " + tmp.file("model.gguf") + " --outtype f32");
    ASSERT_EQ(r.code, 0) << r.err;
    request["model"] = tmp.file("model.gguf");
    request["lora"] = {{{"path", lora}}};
  } else {
    EXPECT_EQ(as_lora.code, 2) << as_lora.err;
    EXPECT_NE(as_lora.err.find(c.refusal), std::string::npos) << as_lora.err;
    EXPECT_NE(as_lora.err.find("--merge"), std::string::npos) << as_lora.err;
    EXPECT_FALSE(io::file_exists(lora));
    const auto r = test::run_cli("gguf --model " + model_dir + " --adapter " + dir + "/adapter --merge --out " +
                                 tmp.file("merged.gguf") + " --outtype f32");
    if (c.merge_refusal) {
      EXPECT_EQ(r.code, 2) << r.err;
      EXPECT_NE(r.err.find(c.merge_refusal), std::string::npos) << r.err;
      return;
    }
    ASSERT_EQ(r.code, 0) << r.err;
    request["model"] = tmp.file("merged.gguf");
  }
  const auto got = test::run_llamacpp(request);
  const double loss = test::mean_nll(request["logits"].get<std::vector<std::vector<int32_t>>>(), got["logits"]);
  const double want = expected["eval_loss"].get<double>();
  const bool gelu = config.activation == model::Activation::GeluTanh || config.activation == model::Activation::GeluErf;
  EXPECT_NEAR(loss, want, (gelu ? 1e-3 : 2e-5) * want) << c.name;
  std::printf("[ llama.cpp ] %s%s: eval loss %.7f, PEFT's %.7f\n", c.name, c.refusal ? " (merged)" : "", loss, want);
}

INSTANTIATE_TEST_SUITE_P(
    Peft, LlamaCppLoraParity,
    ::testing::Values(LoraCase{"llama_all_linear", nullptr, nullptr}, LoraCase{"llama_rslora_paths", nullptr, nullptr},
                      LoraCase{"qwen3_all_linear", nullptr, nullptr}, LoraCase{"gemma2_all_linear", nullptr, nullptr},
                      LoraCase{"gemma3_all_linear", nullptr, nullptr}, LoraCase{"phi3_all_linear", nullptr, nullptr},
                      LoraCase{"gpt2_conv1d", nullptr, nullptr}, LoraCase{"llama_embed_lm_head", nullptr, nullptr},
                      LoraCase{"llama_dora", "DoRA", nullptr}, LoraCase{"qwen2_qv_bias", "trains biases", nullptr},
                      LoraCase{"qwen2_tied_embed", "tied embedding", nullptr},
                      LoraCase{"gemma2_embed", "tied embedding", "always computes the output with the embedding"},
                      LoraCase{"gemma3_embed", "tied embedding", nullptr},
                      LoraCase{"llama_save_embed_lm_head", "modules_to_save", nullptr},
                      LoraCase{"qwen2_save_lm_head", "modules_to_save", nullptr}),
    [](const ::testing::TestParamInfo<LoraCase>& i) { return std::string(i.param.name); });

}  // namespace

namespace {

namespace fs = std::filesystem;

// A model folder holding only a config and a tokenizer (for --vocab-only files): the llama fixture's
// config with the tokenizer's vocabulary size.
std::string vocab_folder(const std::string& tokenizer_dir, const ScratchDir& tmp) {
  const std::string dir = tmp.file("vocab");
  fs::create_directories(dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"})
    if (fs::exists(tokenizer_dir + "/" + f)) fs::copy_file(tokenizer_dir + "/" + f, dir + "/" + f);
  auto config = io::read_json(test::model_fixture("llama") + "/config.json");
  config["vocab_size"] = tok::Tokenizer::load(dir).vocab_size();
  io::write_json_atomic(dir + "/config.json", config);
  return dir;
}

class LlamaCppTokenizerParity : public ::testing::TestWithParam<const char*> {};

// llama.cpp, given the vocabulary, merges and pre-tokenizer name we write, splits the parity corpus
// (prose, e-mail, code, many scripts, emoji) into the ids our tokenizer (= HF tokenizers) gives.
TEST_P(LlamaCppTokenizerParity, CorpusIdsEqualOurs) {
  LOWRANK_REQUIRE_LLAMACPP();
  const std::string name = GetParam();
  const std::string corpus = test::source_dir() + "/tests/data/corpus";
  if (!fs::exists(corpus)) GTEST_SKIP() << "no tests/data (scripts/fetch-test-data.sh)";
  const std::string src = name == std::string("base") ? test::source_dir() + "/models/base"
                                                      : test::source_dir() + "/tests/data/tokenizers/" + name;
  ScratchDir tmp;
  const std::string dir = vocab_folder(src, tmp);
  const auto r = test::run_cli("gguf --model " + dir + " --vocab-only --out " + tmp.file("vocab.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(corpus)) names.push_back(e.path().stem().string());
  std::sort(names.begin(), names.end());
  std::vector<std::string> texts;
  for (const auto& n : names) texts.push_back(test::slurp(corpus + "/" + n + ".txt"));
  names.push_back("special tokens");
  texts.push_back("<|begin_of_text|>a special token inside<|end_of_text|>");
  // llama.cpp's own departures from HF tokenizers for Qwen's vocabulary (any Qwen GGUF has them):
  // it has no NFC normalizer, and it takes the vocabulary's plain token "</s>" for an
  // end-of-generation token, which it then splits out of text as a special token.
  const std::set<std::string> qwen_departures = {"extra_16_korean_jamo_decomposed", "extra_23_combining_marks",
                                                 "extra_12_specials_inside_words", "extra_10_specials_spacing",
                                                 "extra_08_llama2_specials"};
  const auto got = test::run_llamacpp({{"model", tmp.file("vocab.gguf")}, {"vocab_only", true}, {"tokenize", texts}});
  const tok::Tokenizer t = tok::Tokenizer::load(dir);
  size_t exact = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ours = t.encode(texts[i], false);
    const auto theirs = got["tokenize"][i].get<std::vector<int32_t>>();
    if (ours == theirs) ++exact;
    else if (!(name == std::string("qwen3") && qwen_departures.count(names[i])))
      ADD_FAILURE() << name << ": " << names[i] << " differs (" << ours.size() << " vs " << theirs.size() << " ids)";
  }
  std::printf("[ llama.cpp ] %s: %zu/%zu texts split into the same ids\n", name.c_str(), exact, texts.size());
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, LlamaCppTokenizerParity, ::testing::Values("llama3", "qwen3", "llama2", "gpt2", "base"));

// The bundled model through llama.cpp decodes greedily as `lowrank generate --greedy` does.
TEST(LlamaCppBundledModel, GreedyRepliesEqualGenerate) {
  LOWRANK_REQUIRE_LLAMACPP();
  const std::string base = test::source_dir() + "/models/base";
  ScratchDir tmp;
  const auto r = test::run_cli("gguf --model " + base + " --outtype f32 --out " + tmp.file("base.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("tokenizer gpt2 (gpt-2)"), std::string::npos) << r.err;
  const tok::Tokenizer t = tok::Tokenizer::load(base);
  const std::vector<std::string> prompts = {"The quick brown fox", "In the beginning", "int main(int argc, char **argv)"};
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& p : prompts) ids.push_back(t.encode(p, true));  // BOS first, as generate does
  const auto got = test::run_llamacpp(
      {{"model", tmp.file("base.gguf")}, {"context", 128}, {"greedy", {{"prompts", ids}, {"max_tokens", 24}}}});
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto g = test::run_cli("generate --model " + base + " --greedy --max-new-tokens 24 --prompt '" + prompts[i] + "'");
    ASSERT_EQ(g.code, 0) << g.err;
    const std::string theirs = t.decode(got["greedy"][i].get<std::vector<int32_t>>());
    EXPECT_EQ(g.out, theirs + "\n") << prompts[i];
  }
}

}  // namespace
