// Matching added tokens in text (HF AddedVocabulary::find_matches).
#include "added_tokens.h"

#include "lowrank/tokenizer/unicode.h"

namespace lowrank::tok {

void AddedMatcher::build(const std::vector<AddedToken>& tokens, bool normalized) {
  nodes_.assign(1, Node{});
  std::fill(std::begin(first_), std::end(first_), false);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const AddedToken& tok = tokens[t];
    if (tok.normalized != normalized || tok.pattern.empty()) continue;
    int32_t n = 0;
    for (unsigned char c : tok.pattern) {
      int32_t child = -1;
      for (auto& [b, k] : nodes_[n].next)
        if (b == c) { child = k; break; }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[n].next.push_back({c, child});
        nodes_.push_back(Node{});
      }
      n = child;
    }
    // Two tokens with one content: the later one wins (HF keeps the last id for a content).
    nodes_[n].token = static_cast<int32_t>(t);
    first_[static_cast<unsigned char>(tok.pattern[0])] = true;
  }
}

static uint32_t last_cp(std::string_view s) {
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return unicode::next_cp(s, b);
}

void AddedMatcher::find(std::string_view s, const std::vector<AddedToken>& tokens,
                        std::vector<Split>& out) const {
  out.clear();
  size_t start_offset = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (!first_[static_cast<unsigned char>(s[i])]) {
      ++i;
      continue;
    }
    // Longest pattern starting at i.
    int32_t n = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < s.size(); ++k) {
      int32_t child = -1;
      for (auto& [b, c] : nodes_[n].next)
        if (b == static_cast<unsigned char>(s[k])) { child = c; break; }
      if (child < 0) break;
      n = child;
      if (nodes_[n].token >= 0) {
        best = nodes_[n].token;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& tok = tokens[best];
    size_t start = i, stop = best_end;
    i = best_end;  // the matcher moves past this match even when the rules below reject it
    if (tok.single_word) {
      bool start_space = start == 0 || !unicode::is_word_char(last_cp(s.substr(0, start)));
      size_t k = stop;
      bool stop_space = stop == s.size() || !unicode::is_word_char(unicode::next_cp(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t b = ns - 1;
        while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
        size_t k = b;
        if (!unicode::is_whitespace(unicode::next_cp(s, k))) break;
        ns = b;
      }
      start = std::max(ns, start_offset);
    }
    if (tok.rstrip) {
      while (stop < s.size()) {
        size_t k = stop;
        if (!unicode::is_whitespace(unicode::next_cp(s, k))) break;
        stop = k;
      }
    }
    if (start_offset < start) out.push_back({-1, start_offset, start});
    out.push_back({best, start, stop});
    start_offset = stop;
  }
  if (start_offset != s.size()) out.push_back({-1, start_offset, s.size()});
}

}  // namespace lowrank::tok
