#pragma once
// The text of a growing token sequence, a piece per token: each token's text once it is whole
// (not half of a UTF-8 character), from decoding only the last few tokens. Decoding the whole
// sequence at every token, as a stream's first form did, costs time quadratic in its length (a
// 32k-token reply: ~5·10⁸ token decodes). The window starts one settled token back, so that what
// a decoder does at the start of a text (SentencePiece's leading-space strip) happens to both
// decodes compared and cancels (vLLM's incremental detokenization).
#include <cstdint>
#include <string>
#include <vector>

#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::tok {

class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

  // Adds a token; returns the text it completed ("" while it waits: a partial UTF-8 character, a
  // special token skipped).
  std::string add(int32_t id);
  // The text still held at the end (an incomplete character decodes as U+FFFD).
  std::string finish();
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  // Decoded ids_[begin, end).
  std::string decode(size_t begin, size_t end) const;
  // A byte-fallback token ("<0x41>": SentencePiece vocabularies).
  bool byte_token(int32_t id) const;

  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  // ids_[prefix_, read_) decode to what was returned last; ids_[read_, end) are not returned yet.
  size_t prefix_ = 0, read_ = 0;
  bool in_byte_run_ = false;  // the last token not skipped is a byte-fallback token
};

}  // namespace lowrank::tok
