#include "lowrank/tokenizer/incremental_decoder.h"

namespace lowrank::tok {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD: the decoders' mark for cut UTF-8

}  // namespace

bool IncrementalDecoder::byte_token(int32_t id) const {
  const std::string t = tokenizer_.id_to_token(id);
  return t.size() == 6 && t.starts_with("<0x") && t[5] == '>';
}

std::string IncrementalDecoder::decode(size_t begin, size_t end) const {
  return tokenizer_.decode(std::vector<int32_t>(ids_.begin() + begin, ids_.begin() + end), skip_special_);
}

std::string IncrementalDecoder::add(int32_t id) {
  ids_.push_back(id);
  const std::string before = decode(prefix_, read_), now = decode(prefix_, ids_.size());
  // Wait while nothing new is whole: no new text, half a character, or a run of byte tokens that
  // the next one may still extend (ByteFallback decodes a run as a whole: one invalid byte turns
  // all of it into U+FFFD). A skipped special token joins the runs on either side of it.
  if (!(skip_special_ && tokenizer_.is_special(id))) in_byte_run_ = byte_token(id);
  if (now.size() <= before.size() || now.ends_with(kReplacement) || in_byte_run_) return {};
  prefix_ = read_;
  read_ = ids_.size();
  return now.substr(before.size());
}

std::string IncrementalDecoder::finish() {
  const std::string before = decode(prefix_, read_), now = decode(prefix_, ids_.size());
  prefix_ = read_ = ids_.size();
  return now.size() > before.size() ? now.substr(before.size()) : std::string();
}

}  // namespace lowrank::tok
