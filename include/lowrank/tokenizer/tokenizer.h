#pragma once
// Hugging Face tokenizers, read from tokenizer.json (or GPT-2's vocab.json + merges.txt) and
// encoding/decoding exactly as the `tokenizers` library does. See docs/tokenizer.md.
//
// Supported: BPE models (byte-level; SentencePiece-style with "▁" and byte_fallback;
// ignore_merges), normalizers NFC/NFD/NFKC/NFKD/Lowercase/Prepend/Replace/Strip/StripAccents/
// Nmt/Sequence, pre-tokenizers ByteLevel/Split/Metaspace/Digits/Punctuation/Whitespace/
// WhitespaceSplit/BertPreTokenizer/CharDelimiterSplit/Sequence,
// added tokens (special or not, lstrip/rstrip/single_word/normalized), post-processors
// TemplateProcessing/ByteLevel/RobertaProcessing/BertProcessing/Sequence, decoders
// ByteLevel/ByteFallback/Fuse/Strip/Replace/Metaspace/Sequence. Anything else is a clear
// lowrank::Error that names it.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok {

class Tokenizer {
 public:
  // `path`: a tokenizer.json file, or a folder with tokenizer.json, or a folder with vocab.json
  // and merges.txt (GPT-2 style). tokenizer_config.json beside it is read when present.
  // Throws lowrank::Error on a missing, malformed or unsupported file.
  static Tokenizer load(const std::string& path);
  // From the contents of a tokenizer.json (and optionally of tokenizer_config.json).
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = "",
                             const std::string& name = "tokenizer.json");

  // Token ids of `text` (UTF-8; invalid UTF-8 throws lowrank::Error). Special-token strings in
  // the text become their ids; `add_special_tokens` applies the post-processor (e.g. BOS).
  // Thread-safe: concurrent calls on one Tokenizer are fine.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const;  // largest id + 1, added tokens included
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" when the id is unknown
  bool is_special(int32_t id) const;           // a special added token

  // From tokenizer_config.json: bos_token/eos_token/pad_token (a string or {"content": ...}).
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  const nlohmann::json& config() const;  // tokenizer_config.json (empty object if none)

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable after load: copies and moves are cheap
};

// GPT-2's files (vocab.json + merges.txt in `folder`) as the tokenizer.json they stand for:
// byte-level BPE, ByteLevel pre-tokenizer without a prefix space, ByteLevel decoder, and
// <|endoftext|> (plus tokenizer_config.json's special tokens) as special added tokens.
nlohmann::json tokenizer_json_from_vocab_merges(const std::string& folder);

}  // namespace lowrank::tok
