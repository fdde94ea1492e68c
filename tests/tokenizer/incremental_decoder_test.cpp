// IncrementalDecoder: for the real tokenizers (byte-level BPE: Llama 3, Qwen 3, GPT-2;
// SentencePiece with byte fallback and a leading-space strip: Llama 2) the pieces of a corpus
// document, fed token by token, concatenate to the decode of all its ids, and no piece ends in
// half a character; the same for random ids (invalid UTF-8 included).
#include "lowrank/tokenizer/incremental_decoder.h"

#include <gtest/gtest.h>

#include <random>

#include "parity_util.h"

using namespace lowrank;
using namespace lowrank::tok::testing;

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

// The pieces of ids fed one at a time, then finish(); checks that no piece before the end ends in
// U+FFFD unless the full text has one there.
std::string streamed(const tok::Tokenizer& t, const std::vector<int32_t>& ids, bool check_pieces) {
  tok::IncrementalDecoder d(t, true);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = d.add(id);
    if (check_pieces) EXPECT_FALSE(piece.ends_with(kReplacement)) << "a piece ends in half a character";
    out += piece;
  }
  return out + d.finish();
}

class IncrementalDecoder : public ::testing::TestWithParam<std::string> {};

TEST_P(IncrementalDecoder, PiecesConcatenateToTheWholeDecode) {
  LOWRANK_REQUIRE_TEST_DATA();
  const tok::Tokenizer t = tok::Tokenizer::load(tokenizer_path(GetParam()).string());
  std::vector<std::string> texts = {"Ünïcödé → ok 😀😀 漢字かな交じり文, and  two  spaces.\n\nNew paragraph\t tab",
                                    " leading space", "x"};
  for (const char* doc : {"brown_ca01", "brown_cj01", "brown_cr01"}) texts.push_back(slurp(data_dir() / "corpus" / (std::string(doc) + ".txt")));
  for (const auto& text : texts) {
    const std::vector<int32_t> ids = t.encode(text, false);
    same_text(streamed(t, ids, true), t.decode(ids, true), GetParam() + " " + text.substr(0, 20));
  }
}

TEST_P(IncrementalDecoder, RandomIdsConcatenateToTheWholeDecode) {
  LOWRANK_REQUIRE_TEST_DATA();
  const tok::Tokenizer t = tok::Tokenizer::load(tokenizer_path(GetParam()).string());
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> any(0, t.vocab_size() - 1), low(0, 300);  // low ids: bytes in most vocabularies
  for (int round = 0; round < 20; ++round) {
    std::vector<int32_t> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(round % 2 ? low(rng) : any(rng));
    same_text(streamed(t, ids, false), t.decode(ids, true), GetParam() + " round " + std::to_string(round));
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, IncrementalDecoder, ::testing::Values("llama2", "llama3", "qwen3", "gpt2"));

}  // namespace
