#pragma once
// Added tokens (tokenizer.json "added_tokens"): found in the text before the model sees it,
// leftmost-longest, with HF's lstrip/rstrip/single_word rules; `normalized` tokens are matched
// in the normalized text, the others in the raw text.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lowrank::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
  std::string pattern;  // what is matched: content, or its normalized form
};

// Finds added tokens in a string; leftmost, then longest (a byte trie).
class AddedMatcher {
 public:
  void build(const std::vector<AddedToken>& tokens, bool normalized);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits `s` into (token index or -1, start, end) as HF's find_matches does.
  struct Split { int32_t token; size_t start, end; };
  void find(std::string_view s, const std::vector<AddedToken>& tokens,
            std::vector<Split>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;
    int32_t token = -1;
  };
  std::vector<Node> nodes_;
  bool first_[256] = {};
};

}  // namespace lowrank::tok
