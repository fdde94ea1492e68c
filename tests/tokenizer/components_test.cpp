// Pipeline components on small inputs, against HF tokenizers' documented behaviour (the
// examples mirror the ones in HF's own unit tests).
#include <gtest/gtest.h>

#include "../../src/tokenizer/components.h"
#include "lowrank/core/error.h"

namespace lowrank::tok {
namespace {

std::vector<std::string> pre_tokenize(const json& j, const std::string& text) {
  bool byte_level = false;
  auto p = make_pre_tokenizer(j, byte_level);
  Pieces pieces;
  pieces.list.push_back({text, -1, true});
  p->pre_tokenize(pieces);
  std::vector<std::string> out;
  for (auto& piece : pieces.list) out.emplace_back(piece.text);
  return out;
}

using V = std::vector<std::string>;

TEST(PreTokenizers, SplitBehaviors) {
  auto split = [](const char* behavior) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", "\\w+|[^\\w\\s]+"}}},
                {"behavior", behavior}, {"invert", true}};
  };
  const std::string s = "How are you doing?";
  EXPECT_EQ(pre_tokenize(split("Removed"), s), (V{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre_tokenize(split("Isolated"), s),
            (V{"How", " ", "are", " ", "you", " ", "doing", "?"}));
  EXPECT_EQ(pre_tokenize(split("MergedWithPrevious"), s),
            (V{"How ", "are ", "you ", "doing", "?"}));
  EXPECT_EQ(pre_tokenize(split("MergedWithNext"), s),
            (V{"How", " are", " you", " doing", "?"}));
  EXPECT_EQ(pre_tokenize(split("Contiguous"), s),
            (V{"How", " ", "are", " ", "you", " ", "doing?"}));
}

TEST(PreTokenizers, SplitStringPattern) {
  json j = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Removed"},
            {"invert", false}};
  EXPECT_EQ(pre_tokenize(j, "Hey,  man!"), (V{"Hey,", "man!"}));
}

TEST(PreTokenizers, ByteLevelRegexAndPrefix) {
  json j = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_EQ(pre_tokenize(j, "Hello my friend, how is your day going?"),
            (V{" Hello", " my", " friend", ",", " how", " is", " your", " day", " going", "?"}));
  EXPECT_EQ(pre_tokenize(j, "I've  got 123 apples\n\n"),
            (V{" I", "'ve", " ", " got", " 123", " apples", "\n\n"}));
}

TEST(PreTokenizers, Metaspace) {
  json j = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"},
            {"split", true}};
  EXPECT_EQ(pre_tokenize(j, "Hey friend!"), (V{"\xE2\x96\x81Hey", "\xE2\x96\x81" "friend!"}));
  EXPECT_EQ(pre_tokenize(j, "Hey   friend!"),
            (V{"\xE2\x96\x81Hey", "\xE2\x96\x81", "\xE2\x96\x81", "\xE2\x96\x81" "friend!"}));
  j["split"] = false;
  EXPECT_EQ(pre_tokenize(j, "Hey friend!"), (V{"\xE2\x96\x81Hey\xE2\x96\x81" "friend!"}));
  j["prepend_scheme"] = "never";
  EXPECT_EQ(pre_tokenize(j, "Hey"), (V{"Hey"}));
}

TEST(PreTokenizers, DigitsPunctuationWhitespace) {
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "Hey 123 friend!"),
            (V{"Hey ", "123", " friend!"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "Hey 123 friend!"),
            (V{"Hey ", "1", "2", "3", " friend!"}));
  EXPECT_EQ(pre_tokenize({{"type", "Punctuation"}}, "Hey friend!     How are you?!?"),
            (V{"Hey friend", "!", "     How are you", "?", "!", "?"}));
  EXPECT_EQ(pre_tokenize({{"type", "Whitespace"}}, "Hey man!  Good?"),
            (V{"Hey", "man", "!", "Good", "?"}));
  EXPECT_EQ(pre_tokenize({{"type", "Whitespace"}}, "How are you doing?"),
            (V{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre_tokenize({{"type", "WhitespaceSplit"}}, "Hey man!\tGood?"),
            (V{"Hey", "man!", "Good?"}));
}

TEST(PreTokenizers, Sequence) {
  json j = {{"type", "Sequence"},
            {"pretokenizers", {{{"type", "WhitespaceSplit"}}, {{"type", "Digits"}}}}};
  EXPECT_EQ(pre_tokenize(j, "Hey friend!   abc1234"), (V{"Hey", "friend!", "abc", "1234"}));
}

std::string norm(const json& j, const std::string& s) { return make_normalizer(j)->normalize(s); }

TEST(Normalizers, UnicodeForms) {
  const std::string e_acute_decomposed = "e\xCC\x81", e_acute = "\xC3\xA9";
  EXPECT_EQ(norm({{"type", "NFC"}}, e_acute_decomposed), e_acute);
  EXPECT_EQ(norm({{"type", "NFD"}}, e_acute), e_acute_decomposed);
  EXPECT_EQ(norm({{"type", "NFKC"}}, "\xEF\xAC\x81" "x\xC2\xB2"), "fix2");  // ﬁx² -> fix2
  EXPECT_EQ(norm({{"type", "NFKD"}}, "\xE2\x91\xA0"), "1");                 // ① -> 1
  // Hangul: composed from jamo, and canonical reordering of combining marks.
  EXPECT_EQ(norm({{"type", "NFC"}}, "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");
  EXPECT_EQ(norm({{"type", "NFC"}}, "a\xCC\x9B\xCC\x81"), "\xC3\xA1\xCC\x9B");  // a + horn + acute
  EXPECT_EQ(norm({{"type", "NFC"}}, "\xE2\x84\xAB"), "\xC3\x85");  // Angstrom sign -> Å
}

TEST(Normalizers, LowercasePrependReplaceStripSequence) {
  EXPECT_EQ(norm({{"type", "Lowercase"}}, "HeLLo \xC3\x84\xCE\xA3"), "hello \xC3\xA4\xCF\x83");
  EXPECT_EQ(norm({{"type", "Prepend"}, {"prepend", "_"}}, "ab"), "_ab");
  EXPECT_EQ(norm({{"type", "Prepend"}, {"prepend", "_"}}, ""), "");
  EXPECT_EQ(norm({{"type", "Replace"}, {"pattern", {{"String", "  "}}}, {"content", " "}},
                 "a     b"),
            "a   b");
  EXPECT_EQ(norm({{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}},
                 "a \t b\nc"),
            "a_b_c");
  EXPECT_EQ(norm({{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}},
                 " \t\xE3\x80\x80 x y \n"),
            "x y");
  EXPECT_EQ(norm({{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}}, "  x  "), "  x");
  json seq = {{"type", "Sequence"},
              {"normalizers", {{{"type", "Lowercase"}}, {{"type", "Prepend"}, {"prepend", ">"}}}}};
  EXPECT_EQ(norm(seq, "AB"), ">ab");
}

std::string decode(const json& j, std::vector<std::string> tokens) {
  make_decoder(j)->decode_chain(tokens);
  std::string s;
  for (auto& t : tokens) s += t;
  return s;
}

TEST(Decoders, Basic) {
  EXPECT_EQ(decode({{"type", "ByteLevel"}}, {"Hello", "\xC4\xA0world", "\xC4\x8A"}), "Hello world\n");
  EXPECT_EQ(decode({{"type", "ByteFallback"}}, {"a", "<0xE2>", "<0x96>", "<0x81>", "b"}),
            "a\xE2\x96\x81" "b");
  EXPECT_EQ(decode({{"type", "ByteFallback"}}, {"<0xE2>", "<0x96>", "x"}),
            "\xEF\xBF\xBD\xEF\xBF\xBDx");  // invalid bytes: one U+FFFD each
  EXPECT_EQ(decode({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}, {"  a ", " b"}),
            " a b");
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                    {"prepend_scheme", "always"}},
                   {"\xE2\x96\x81Hey", "\xE2\x96\x81" "friend"}),
            "Hey friend");
  EXPECT_EQ(decode({{"type", "Replace"}, {"pattern", {{"String", "_"}}}, {"content", " "}},
                   {"a_b", "_c"}),
            "a b c");
}

TEST(PostProcessors, Template) {
  json j = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                        {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}},
                                {"</s>", {{"id", "</s>"}, {"ids", {2}}, {"tokens", {"</s>"}}}}}}};
  std::vector<int32_t> ids = {7, 8};
  make_post_processor(j)->process(ids);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 7, 8, 2}));
  j["single"] = "<s> $A:0 </s>";
  ids = {5};
  make_post_processor(j)->process(ids);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 5, 2}));
}

TEST(Components, UnknownTypesAreNamed) {
  bool bl = false;
  try {
    make_normalizer({{"type", "Frobnicate"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Frobnicate"), std::string::npos);
  }
  EXPECT_THROW(make_pre_tokenizer({{"type", "UnicodeScripts"}}, bl), Error);
  EXPECT_THROW(make_decoder({{"type", "CTC"}}), Error);
  EXPECT_THROW(make_post_processor({{"type", "Nope"}}), Error);
  EXPECT_THROW(make_pre_tokenizer({{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                   {"behavior", "Isolated"}}, bl),
               Error);
  EXPECT_THROW(make_pre_tokenizer({{"type", "Split"}, {"pattern", {{"String", "x"}}},
                                   {"behavior", "Sideways"}}, bl),
               Error);
}

}  // namespace
}  // namespace lowrank::tok

#include "lowrank/tokenizer/unicode.h"

namespace lowrank::tok {
namespace {

TEST(Unicode, Utf8LossyLikeRust) {
  using unicode::utf8_lossy;
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("ok"), "ok");
  EXPECT_EQ(utf8_lossy("a\xE2\x96" "b"), "a" + r + "b");        // truncated 3-byte: one U+FFFD
  EXPECT_EQ(utf8_lossy("\xF5\x80"), r + r);                      // never-valid lead byte
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), r + r + r);              // surrogate: byte by byte
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), r);                      // truncated 4-byte
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), r + r);                      // overlong
  EXPECT_EQ(unicode::find_invalid_utf8("\xF0\x9F\x98\x80 ok"), std::string::npos);
  EXPECT_EQ(unicode::find_invalid_utf8("abc\xFF"), 3u);
}

TEST(Unicode, Categories) {
  EXPECT_STREQ(unicode::category('A'), "Lu");
  EXPECT_STREQ(unicode::category(0x4E00), "Lo");
  EXPECT_STREQ(unicode::category(0x0301), "Mn");
  EXPECT_TRUE(unicode::is_numeric(0x0663));   // Arabic-Indic three
  EXPECT_TRUE(unicode::is_numeric(0x2460));   // circled one (No)
  EXPECT_TRUE(unicode::is_punctuation(0x00BF));
  EXPECT_TRUE(unicode::is_punctuation('$'));  // ASCII punctuation includes symbols
  EXPECT_TRUE(unicode::is_whitespace(0x3000));
  EXPECT_FALSE(unicode::is_whitespace(0x200B));
  EXPECT_FALSE(unicode::is_whitespace(0x180E));
}

}  // namespace
}  // namespace lowrank::tok

namespace lowrank::tok {
namespace {

TEST(PreTokenizers, WhitespaceUsesRustWordClass) {
  // Circled letters are Alphabetic (so \w in Rust) although their category is So.
  EXPECT_EQ(pre_tokenize({{"type", "Whitespace"}}, "a\xE2\x92\xB6" "b \xE2\x84\xA2!"),
            (V{"a\xE2\x92\xB6" "b", "\xE2\x84\xA2!"}));
  EXPECT_TRUE(unicode::is_word_char(0x24B6));
  EXPECT_TRUE(unicode::is_word_char(0x0301));
  EXPECT_TRUE(unicode::is_word_char(0x4E2D));
  EXPECT_FALSE(unicode::is_word_char(0x2122));
  EXPECT_FALSE(unicode::is_word_char(0x3000));
}

}  // namespace
}  // namespace lowrank::tok

namespace lowrank::tok {
namespace {

TEST(PreTokenizers, BertAndCharDelimiter) {
  EXPECT_EQ(pre_tokenize({{"type", "BertPreTokenizer"}}, "Hey friend!     How are you?!?"),
            (V{"Hey", "friend", "!", "How", "are", "you", "?", "!", "?"}));
  EXPECT_EQ(pre_tokenize({{"type", "CharDelimiterSplit"}, {"delimiter", "x"}}, "HelloxWorldxx!"),
            (V{"Hello", "World", "!"}));
}

TEST(Normalizers, StripAccentsAndNmt) {
  json seq = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFD"}}, {{"type", "StripAccents"}}}}};
  EXPECT_EQ(norm(seq, "\xC3\xA9l\xC3\xA9gant"), "elegant");
  EXPECT_EQ(norm({{"type", "Nmt"}}, "a\x01" "b\tc\xE2\x80\x8B" "d"), "ab c d");
}

}  // namespace
}  // namespace lowrank::tok
