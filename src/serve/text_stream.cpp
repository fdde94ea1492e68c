#include "lowrank/serve/text_stream.h"

#include <algorithm>

#include "lowrank/core/error.h"

namespace lowrank::serve {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD: the decoder's mark for cut UTF-8

// Length of the longest proper prefix of `stop` that `text` ends with.
size_t partial_stop_suffix(const std::string& text, const std::string& stop) {
  for (size_t k = std::min(stop.size() - 1, text.size()); k > 0; --k)
    if (text.compare(text.size() - k, k, stop, 0, k) == 0) return k;
  return 0;
}

}  // namespace

TextStream::TextStream(const tok::Tokenizer& tokenizer, std::vector<std::string> stop)
    : tokenizer_(tokenizer), stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
}

std::string TextStream::add(int32_t token) {
  LR_CHECK(!stopped_, "TextStream::add after a stop string");
  ids_.push_back(token);
  text_ = tokenizer_.decode(ids_, true);
  size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, text_.find(s));
  if (cut != std::string::npos) {
    text_.resize(cut);
    stopped_ = true;
  }
  // What was sent must stay a prefix; a decoder that rewrites earlier text (rare) holds the rest.
  if (!text_.starts_with(sent_)) return {};
  size_t safe = text_.size();
  if (!stopped_) {
    if (text_.ends_with(kReplacement)) safe = sent_.size();
    for (const auto& s : stop_) safe = std::min(safe, text_.size() - partial_stop_suffix(text_, s));
  }
  if (safe <= sent_.size()) return {};
  std::string delta = text_.substr(sent_.size(), safe - sent_.size());
  sent_ += delta;
  return delta;
}

std::string TextStream::flush() {
  if (!text_.starts_with(sent_)) return {};
  std::string rest = text_.substr(sent_.size());
  sent_ += rest;
  return rest;
}

}  // namespace lowrank::serve
