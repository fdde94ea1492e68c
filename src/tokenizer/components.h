#pragma once
// The pipeline stages of a tokenizer.json, each built from its JSON object by a make_* factory
// that throws lowrank::Error naming an unknown "type". Semantics follow HF tokenizers exactly.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "pieces.h"

namespace lowrank::tok {

using json = nlohmann::json;

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Writes the normalized text to `out` and returns true, or returns false when unchanged.
  virtual bool apply(std::string_view in, std::string& out) const = 0;
  std::string normalize(std::string_view in) const {
    std::string out;
    return apply(in, out) ? out : std::string(in);
  }
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);  // null → nullptr

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may transform) every piece that is not yet a token.
  virtual void pre_tokenize(Pieces& p) const = 0;
};
// `byte_level` is set when the pipeline ends in a ByteLevel pre-tokenizer: the pieces then stay
// raw bytes and the BPE model works on bytes (equivalent to HF's byte-to-char mapping).
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, bool& byte_level);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const json& j);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence (called only with add_special_tokens).
  virtual void process(std::vector<int32_t>& ids) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const json& j);

// JSON field helpers that name the component in their errors.
const json& field(const json& j, const char* key, const std::string& where);
std::string get_string(const json& j, const char* key, const std::string& where);
bool get_bool(const json& j, const char* key, bool def, const std::string& where);
// {"String": s} or {"Regex": r} (Split, Replace).
struct Pattern {
  bool is_regex = false;
  std::string text;
};
Pattern get_pattern(const json& j, const std::string& where);

}  // namespace lowrank::tok
