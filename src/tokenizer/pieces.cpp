// Splitting a piece by (start, end, is_match) spans with HF's five delimiter behaviours, and the
// JSON helpers shared by the component factories.
#include "pieces.h"

#include "components.h"
#include "lowrank/core/error.h"

namespace lowrank::tok {

SplitBehavior parse_split_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return SplitBehavior::Removed;
  if (s == "Isolated") return SplitBehavior::Isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (s == "Contiguous") return SplitBehavior::Contiguous;
  throw error(where, ": unknown split behavior \"", s, "\"");
}

namespace {
// The spans in order, each appended to the piece before it when joins(span, whether the span
// before it matched), else starting a piece; then emit(start, end) of every piece.
template <typename Joins, typename Emit>
void emit_joined(const std::vector<Span>& spans, Joins joins, Emit emit) {
  std::vector<std::pair<size_t, size_t>> acc;
  bool prev = false;
  for (const Span& s : spans) {
    if (!acc.empty() && joins(s, prev))
      acc.back().second = s.end;
    else
      acc.push_back({s.start, s.end});
    prev = s.match;
  }
  for (auto& [a, b] : acc) emit(a, b);
}
}  // namespace

void split_spans(std::string_view text, const std::vector<Span>& spans, SplitBehavior behavior,
                 std::vector<Piece>& out, bool at_start) {
  auto emit = [&](size_t a, size_t b) {
    if (b > a) out.push_back({text.substr(a, b - a), -1, at_start && a == 0});
  };
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Span& s : spans) emit(s.start, s.end);
      return;
    case SplitBehavior::Removed:
      for (const Span& s : spans)
        if (!s.match) emit(s.start, s.end);
      return;
    case SplitBehavior::Contiguous:  // consecutive spans of the same kind are joined
      emit_joined(spans, [](const Span& s, bool prev) { return s.match == prev; }, emit);
      return;
    case SplitBehavior::MergedWithPrevious:  // a match joins the piece before it
      emit_joined(spans, [](const Span& s, bool prev) { return s.match && !prev; }, emit);
      return;
    case SplitBehavior::MergedWithNext: {
      std::vector<std::pair<size_t, size_t>> acc;
      bool prev = false;
      for (size_t k = spans.size(); k-- > 0;) {
        const Span& s = spans[k];
        if (s.match && !prev && !acc.empty())
          acc.back().first = s.start;
        else
          acc.push_back({s.start, s.end});
        prev = s.match;
      }
      for (size_t k = acc.size(); k-- > 0;) emit(acc[k].first, acc[k].second);
      return;
    }
  }
}

const json& field(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) throw error(where, ": missing \"", key, "\"");
  return *it;
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_string()) throw error(where, ": \"", key, "\" must be a string");
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool def, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) throw error(where, ": \"", key, "\" must be true or false");
  return it->get<bool>();
}

Pattern get_pattern(const json& j, const std::string& where) {
  const json& p = field(j, "pattern", where);
  if (p.is_object() && p.size() == 1) {
    if (p.contains("String") && p["String"].is_string()) return {false, p["String"]};
    if (p.contains("Regex") && p["Regex"].is_string()) return {true, p["Regex"]};
  }
  throw error(where, ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace lowrank::tok
