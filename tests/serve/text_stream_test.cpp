// TextStream: streamed pieces concatenate to the reply, stop strings cut it (also across
// tokens, never sending a piece of the stop string), incomplete UTF-8 waits for its bytes.
#include <gtest/gtest.h>

#include "lowrank/serve/text_stream.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

const tok::Tokenizer& tokenizer() {
  static const tok::Tokenizer tk = tok::Tokenizer::load(test::source_dir() + "/models/base");
  return tk;
}

struct Streamed {
  std::string sent, text;
  bool stopped = false;
  int64_t tokens = 0;
};

Streamed stream(const std::string& text, std::vector<std::string> stop) {
  serve::TextStream ts(tokenizer(), std::move(stop));
  Streamed out;
  for (int32_t id : tokenizer().encode(text, false)) {
    out.sent += ts.add(id);
    if (ts.stopped()) break;
  }
  if (!ts.stopped()) out.sent += ts.flush();
  out.text = ts.text();
  out.stopped = ts.stopped();
  out.tokens = ts.tokens();
  return out;
}

TEST(TextStream, PiecesConcatenateToTheDecodedText) {
  const std::string text = "The function returns a list of names, or an empty list. Ünïcödé → ok 😀.";
  auto s = stream(text, {});
  EXPECT_EQ(s.text, tokenizer().decode(tokenizer().encode(text, false), true));
  EXPECT_EQ(s.sent, s.text);
  EXPECT_FALSE(s.stopped);
}

TEST(TextStream, StopStringCutsTheTextBeforeIt) {
  auto s = stream("The function returns a list of names. It never fails.", {"never", "of names."});
  EXPECT_TRUE(s.stopped);
  EXPECT_EQ(s.text, "The function returns a list ");
  EXPECT_EQ(s.sent, s.text);  // the stop string's first tokens were held back, never sent
  EXPECT_LT(s.tokens, static_cast<int64_t>(tokenizer().encode("The function returns a list of names.", false).size()) + 1);
}

TEST(TextStream, AStopStringThatNeverComesHoldsNothingBackAtTheEnd) {
  auto s = stream("a list of names", {"names!"});
  EXPECT_FALSE(s.stopped);
  EXPECT_EQ(s.sent, "a list of names");
}

TEST(TextStream, IncompleteUtf8IsHeldUntilItsBytesArrive) {
  serve::TextStream ts(tokenizer(), {});
  std::string sent;
  for (int32_t id : tokenizer().encode("😀😀", false)) {
    std::string piece = ts.add(id);
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "sent a replacement character";
    sent += piece;
  }
  sent += ts.flush();
  EXPECT_EQ(sent, "😀😀");
}

}  // namespace
