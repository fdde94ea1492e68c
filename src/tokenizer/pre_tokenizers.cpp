// Pre-tokenizers: ByteLevel, Split, Metaspace, Digits, Punctuation, Whitespace,
// WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit, Sequence.
#include <optional>

#include "components.h"
#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"
#include "regex.h"

namespace lowrank::tok {
namespace {

// Runs `split(piece, out)` on every piece that is not a token yet.
template <typename F>
void for_each_text_piece(Pieces& p, F&& split) {
  std::vector<Piece> out;
  out.reserve(p.list.size() * 2);
  for (const Piece& piece : p.list) {
    if (piece.id >= 0)
      out.push_back(piece);
    else
      split(piece, out);
  }
  p.list.swap(out);
}

// Spans of a char predicate, as HF's `impl Pattern for Fn(char) -> bool`.
template <typename Pred>
void char_spans(std::string_view s, Pred pred, std::vector<Span>& spans) {
  spans.clear();
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    size_t b = i;
    uint32_t cp = unicode::next_cp(s, i);
    if (pred(cp)) {
      if (last < b) spans.push_back({last, b, false});
      spans.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
}

void regex_spans(const Regex& re, std::string_view s, std::vector<Span>& spans, bool invert) {
  thread_local std::vector<Regex::Match> m;
  m.clear();
  spans.clear();
  re.find_all(s, m);
  size_t prev = 0;
  for (auto& r : m) {
    if (prev != r.start) spans.push_back({prev, r.start, invert});
    spans.push_back({r.start, r.end, !invert});
    prev = r.end;
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), invert});
}

void literal_spans(std::string_view lit, std::string_view s, std::vector<Span>& spans,
                   bool invert) {
  spans.clear();
  size_t prev = 0, pos = s.find(lit);
  while (pos != std::string_view::npos) {
    if (prev != pos) spans.push_back({prev, pos, invert});
    spans.push_back({pos, pos + lit.size(), !invert});
    prev = pos + lit.size();
    pos = s.find(lit, prev);
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), invert});
}

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) re_.emplace(kGpt2Pattern, "pre_tokenizer ByteLevel");
  }
  void pre_tokenize(Pieces& p) const override {
    std::vector<Span> spans;
    for_each_text_piece(p, [&](const Piece& piece, std::vector<Piece>& out) {
      std::string_view t = piece.text;
      if (add_prefix_space_ && (t.empty() || t[0] != ' ')) t = p.own(" " + std::string(t));
      if (!re_) {
        out.push_back({t, -1, piece.at_start});
        return;
      }
      regex_spans(*re_, t, spans, false);
      split_spans(t, spans, SplitBehavior::Isolated, out, piece.at_start);
    });
    // The byte-to-char mapping itself is implicit: the model is given raw bytes.
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> re_;
};

class Split final : public PreTokenizer {
 public:
  Split(const Pattern& pat, SplitBehavior b, bool invert)
      : literal_(pat.text), behavior_(b), invert_(invert) {
    if (pat.is_regex || pat.text.empty()) re_.emplace(pat.is_regex ? pat.text : "", "pre_tokenizer Split");
  }
  void pre_tokenize(Pieces& p) const override {
    std::vector<Span> spans;
    for_each_text_piece(p, [&](const Piece& piece, std::vector<Piece>& out) {
      if (re_)
        regex_spans(*re_, piece.text, spans, invert_);
      else
        literal_spans(literal_, piece.text, spans, invert_);
      split_spans(piece.text, spans, behavior_, out, piece.at_start);
    });
  }

 private:
  std::string literal_;
  std::optional<Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

class Metaspace final : public PreTokenizer {
 public:
  enum class Scheme { Always, First, Never };
  Metaspace(std::string rep, Scheme s, bool split) : rep_(std::move(rep)), scheme_(s), split_(split) {}
  void pre_tokenize(Pieces& p) const override {
    std::vector<Span> spans;
    for_each_text_piece(p, [&](const Piece& piece, std::vector<Piece>& out) {
      std::string s;
      s.reserve(piece.text.size() + rep_.size());
      for (char c : piece.text) {
        if (c == ' ')
          s += rep_;
        else
          s += c;
      }
      bool starts = s.compare(0, rep_.size(), rep_) == 0;
      if (!starts && (scheme_ == Scheme::Always || (scheme_ == Scheme::First && piece.at_start)))
        s.insert(0, rep_);
      std::string_view t = p.own(std::move(s));
      if (!split_) {
        out.push_back({t, -1, piece.at_start});
        return;
      }
      literal_spans(rep_, t, spans, false);
      split_spans(t, spans, SplitBehavior::MergedWithNext, out, piece.at_start);
    });
  }

 private:
  std::string rep_;
  Scheme scheme_;
  bool split_;
};

template <typename Pred>
class CharSplit final : public PreTokenizer {
 public:
  CharSplit(Pred pred, SplitBehavior b) : pred_(pred), behavior_(b) {}
  void pre_tokenize(Pieces& p) const override {
    std::vector<Span> spans;
    for_each_text_piece(p, [&](const Piece& piece, std::vector<Piece>& out) {
      char_spans(piece.text, pred_, spans);
      split_spans(piece.text, spans, behavior_, out, piece.at_start);
    });
  }

 private:
  Pred pred_;
  SplitBehavior behavior_;
};
template <typename Pred>
std::unique_ptr<PreTokenizer> char_split(Pred pred, SplitBehavior b) {
  return std::make_unique<CharSplit<Pred>>(pred, b);
}

// Whitespace: the matches of \w+|[^\w\s]+ (Rust regex, Unicode classes) are the pieces.
class Whitespace final : public PreTokenizer {
 public:
  Whitespace()
      : re_(std::string(unicode::kWordClass) + "+|[^" +
                std::string(unicode::kWordClass).substr(1, std::string(unicode::kWordClass).size() - 2) +
                "\\s]+",
            "pre_tokenizer Whitespace") {}
  void pre_tokenize(Pieces& p) const override {
    std::vector<Span> spans;
    for_each_text_piece(p, [&](const Piece& piece, std::vector<Piece>& out) {
      regex_spans(re_, piece.text, spans, /*invert=*/true);  // keep the matches
      split_spans(piece.text, spans, SplitBehavior::Removed, out, piece.at_start);
    });
  }

 private:
  Regex re_;
};

class Sequence final : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> v) : list_(std::move(v)) {}
  void pre_tokenize(Pieces& p) const override {
    for (auto& t : list_) t->pre_tokenize(p);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> list_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, bool& byte_level) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw error("pre_tokenizer: expected an object with a \"type\"");
  const std::string type = j["type"];
  const std::string where = "pre_tokenizer " + type;
  if (byte_level)
    throw error("pre_tokenizer ", type, " after ByteLevel is not supported");
  if (type == "ByteLevel") {
    byte_level = true;
    return std::make_unique<ByteLevel>(get_bool(j, "add_prefix_space", true, where),
                                       get_bool(j, "use_regex", true, where));
  }
  if (type == "Split") {
    const json& b = field(j, "behavior", where);
    if (!b.is_string()) throw error(where, ": \"behavior\" must be a string");
    return std::make_unique<Split>(get_pattern(j, where), parse_split_behavior(b, where),
                                   get_bool(j, "invert", false, where));
  }
  if (type == "Metaspace") {
    std::string rep = get_string(j, "replacement", where);
    std::string scheme = "always";
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) scheme = j["prepend_scheme"];
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() &&
        !j["add_prefix_space"].get<bool>())
      scheme = "never";
    Metaspace::Scheme s = scheme == "always" ? Metaspace::Scheme::Always
                          : scheme == "first" ? Metaspace::Scheme::First
                          : scheme == "never" ? Metaspace::Scheme::Never
                                              : throw error(where, ": unknown prepend_scheme \"", scheme, "\"");
    return std::make_unique<Metaspace>(rep, s, get_bool(j, "split", true, where));
  }
  if (type == "Digits")
    return char_split([](uint32_t c) { return unicode::is_numeric(c); },
                      get_bool(j, "individual_digits", false, where) ? SplitBehavior::Isolated
                                                                      : SplitBehavior::Contiguous);
  if (type == "Punctuation") {
    SplitBehavior b = SplitBehavior::Isolated;
    if (j.contains("behavior") && j["behavior"].is_string())
      b = parse_split_behavior(j["behavior"], where);
    return char_split([](uint32_t c) { return unicode::is_punctuation(c); }, b);
  }
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "BertPreTokenizer") {  // whitespace removed, then punctuation isolated
    std::vector<std::unique_ptr<PreTokenizer>> v;
    v.push_back(char_split([](uint32_t c) { return unicode::is_whitespace(c); },
                           SplitBehavior::Removed));
    v.push_back(char_split([](uint32_t c) { return unicode::is_punctuation(c); },
                           SplitBehavior::Isolated));
    return std::make_unique<Sequence>(std::move(v));
  }
  if (type == "CharDelimiterSplit") {
    std::string d = get_string(j, "delimiter", where);
    size_t i = 0;
    if (d.empty() || (unicode::next_cp(d, i), i != d.size()))
      throw error(where, ": \"delimiter\" must be one character");
    return std::make_unique<Split>(Pattern{false, d}, SplitBehavior::Removed, false);
  }
  if (type == "WhitespaceSplit")
    return char_split([](uint32_t c) { return unicode::is_whitespace(c); }, SplitBehavior::Removed);
  if (type == "Sequence") {
    const json& list = field(j, "pretokenizers", where);
    if (!list.is_array()) throw error(where, ": \"pretokenizers\" must be an array");
    std::vector<std::unique_ptr<PreTokenizer>> v;
    for (const json& e : list)
      if (auto t = make_pre_tokenizer(e, byte_level)) v.push_back(std::move(t));
    return std::make_unique<Sequence>(std::move(v));
  }
  throw error("pre_tokenizer type \"", type, "\" is not supported");
}

}  // namespace lowrank::tok
