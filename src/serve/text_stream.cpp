#include "lowrank/serve/text_stream.h"

#include <algorithm>

#include "lowrank/core/error.h"

namespace lowrank::serve {
namespace {

// Length of the longest proper prefix of `stop` that `text` ends with.
size_t partial_stop_suffix(const std::string& text, const std::string& stop) {
  for (size_t k = std::min(stop.size() - 1, text.size()); k > 0; --k)
    if (text.compare(text.size() - k, k, stop, 0, k) == 0) return k;
  return 0;
}

}  // namespace

TextStream::TextStream(const tok::Tokenizer& tokenizer, std::vector<std::string> stop)
    : decoder_(tokenizer, true), stop_(std::move(stop)) {
  std::erase_if(stop_, [](const std::string& s) { return s.empty(); });
  for (const auto& s : stop_) longest_stop_ = std::max(longest_stop_, s.size());
}

std::string TextStream::send(size_t end) {
  if (end <= sent_) return {};
  std::string delta = text_.substr(sent_, end - sent_);
  sent_ = end;
  return delta;
}

void TextStream::append(const std::string& piece) {
  // A stop string that the piece completes starts at most longest - 1 bytes before it.
  const size_t from = text_.size() > longest_stop_ ? text_.size() - longest_stop_ + 1 : 0;
  text_ += piece;
  size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, text_.find(s, from));
  if (cut == std::string::npos) return;
  text_.resize(cut);
  stopped_ = true;
}

std::string TextStream::add(int32_t token) {
  LR_CHECK(!stopped_, "TextStream::add after a stop string");
  append(decoder_.add(token));
  if (stopped_) return send(text_.size());
  // Hold back what could be the start of a stop string.
  size_t safe = text_.size();
  for (const auto& s : stop_) safe = std::min(safe, text_.size() - partial_stop_suffix(text_, s));
  return send(safe);
}

std::string TextStream::flush() {
  if (!stopped_) append(decoder_.finish());
  return send(text_.size());
}

}  // namespace lowrank::serve
