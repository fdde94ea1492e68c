#pragma once
// The pre-tokenized string: the text cut into pieces, some already resolved to a token id
// (added tokens), the rest still to be normalized, split and given to the model. Pieces are
// views into the input or into strings owned here, so splitting does not copy text.
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok {

struct Piece {
  std::string_view text;
  int32_t id = -1;        // >= 0: an added token, already final
  bool at_start = false;  // starts at offset 0 of the input (Metaspace prepend_scheme "first")
};

class Pieces {
 public:
  std::vector<Piece> list;
  // Keeps a transformed string alive for as long as this object and returns a view of it.
  std::string_view own(std::string s) {
    store_.push_back(std::move(s));
    return store_.back();
  }

 private:
  std::deque<std::string> store_;
};

// How a split keeps the delimiters (HF SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_split_behavior(const std::string& s, const std::string& where);

// (start, end, is_match) spans covering a piece, as HF's Pattern::find_matches returns them.
struct Span {
  size_t start, end;
  bool match;
};
// Applies `behavior` to the spans and appends the resulting non-empty sub-views of `text`
// (`at_start`: whether `text` itself starts at offset 0 of the input).
void split_spans(std::string_view text, const std::vector<Span>& spans, SplitBehavior behavior,
                 std::vector<Piece>& out, bool at_start = false);

}  // namespace lowrank::tok
