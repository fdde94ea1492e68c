#pragma once
// A reply's text as its tokens arrive. Each token yields the text that is safe to send now: not
// half of a UTF-8 character, not what could be the start of a stop string. A stop string ends
// the reply, the text cut just before it (OpenAI's `stop`). Each token costs time independent of
// the reply's length (tok::IncrementalDecoder; stop strings looked for in the new text's reach).
#include <cstdint>
#include <string>
#include <vector>

#include "lowrank/tokenizer/incremental_decoder.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::serve {

class TextStream {
 public:
  TextStream(const tok::Tokenizer& tokenizer, std::vector<std::string> stop);

  // Adds one generated token; returns the text to send now ("" when held back).
  std::string add(int32_t token);
  // At the end (no stop string): the text held back so far.
  std::string flush();
  bool stopped() const { return stopped_; }      // a stop string was reached
  int64_t tokens() const { return static_cast<int64_t>(decoder_.ids().size()); }
  // The reply: the decoded tokens (special tokens skipped), cut at a stop string.
  const std::string& text() const { return text_; }

 private:
  // Appends a decoded piece to text_, cut (and stopped) at a stop string.
  void append(const std::string& piece);
  // text_ from sent_ up to `end` (bytes), now handed out.
  std::string send(size_t end);

  tok::IncrementalDecoder decoder_;
  std::vector<std::string> stop_;
  size_t longest_stop_ = 0;
  std::string text_;  // the decoded text so far (cut at a stop string once stopped)
  size_t sent_ = 0;   // bytes of text_ handed out so far
  bool stopped_ = false;
};

}  // namespace lowrank::serve
