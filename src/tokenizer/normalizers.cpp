// Normalizers: NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, StripAccents, Nmt,
// Sequence.
#include <optional>

#include "components.h"
#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"
#include "regex.h"

namespace lowrank::tok {
namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::Form f) : form_(f) {}
  bool apply(std::string_view in, std::string& out) const override {
    for (char c : in)
      if (static_cast<unsigned char>(c) >= 0x80) {
        out = unicode::normalize(in, form_);
        return true;
      }
    return false;  // ASCII is invariant
  }

 private:
  unicode::Form form_;
};

class Lowercase final : public Normalizer {
 public:
  bool apply(std::string_view in, std::string& out) const override {
    out = unicode::lowercase(in);
    return true;
  }
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string p) : prefix_(std::move(p)) {}
  bool apply(std::string_view in, std::string& out) const override {
    if (in.empty()) return false;  // HF prepends only to non-empty strings
    out.reserve(prefix_.size() + in.size());
    out = prefix_;
    out += in;
    return true;
  }

 private:
  std::string prefix_;
};

class Replace final : public Normalizer {
 public:
  Replace(const Pattern& p, std::string content) : literal_(p.text), content_(std::move(content)) {
    if (p.is_regex) regex_.emplace(p.text, "normalizer Replace");
  }
  bool apply(std::string_view in, std::string& out) const override {
    if (regex_) {
      std::vector<Regex::Match> m;
      regex_->find_all(in, m);
      if (m.empty()) return false;
      out.clear();
      size_t prev = 0;
      for (auto& r : m) {
        out.append(in.substr(prev, r.start - prev));
        out += content_;
        prev = r.end;
      }
      out.append(in.substr(prev));
      return true;
    }
    if (literal_.empty()) return false;
    size_t pos = in.find(literal_);
    if (pos == std::string_view::npos) return false;
    out.clear();
    out.reserve(in.size() + 16);
    size_t prev = 0;
    while (pos != std::string_view::npos) {
      out.append(in.substr(prev, pos - prev));
      out += content_;
      prev = pos + literal_.size();
      pos = in.find(literal_, prev);
    }
    out.append(in.substr(prev));
    return true;
  }

 private:
  std::string literal_, content_;
  std::optional<Regex> regex_;
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  bool apply(std::string_view in, std::string& out) const override {
    size_t a = 0, b = in.size();
    if (left_) {
      while (a < b) {
        size_t i = a;
        if (!unicode::is_whitespace(unicode::next_cp(in, i))) break;
        a = i;
      }
    }
    if (right_) {
      while (b > a) {
        size_t start = b - 1;
        while (start > a && (static_cast<unsigned char>(in[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!unicode::is_whitespace(unicode::next_cp(in, i))) break;
        b = start;
      }
    }
    if (a == 0 && b == in.size()) return false;
    out.assign(in.substr(a, b - a));
    return true;
  }

 private:
  bool left_, right_;
};

// Char-by-char filter/map (StripAccents, Nmt): `f` returns -1 to drop a char, else its
// replacement.
template <typename F>
class CharMap final : public Normalizer {
 public:
  explicit CharMap(F f) : f_(f) {}
  bool apply(std::string_view in, std::string& out) const override {
    out.clear();
    out.reserve(in.size());
    bool changed = false;
    for (size_t i = 0; i < in.size();) {
      size_t b = i;
      uint32_t cp = unicode::next_cp(in, i);
      int64_t r = f_(cp);
      if (r == static_cast<int64_t>(cp)) {
        out.append(in.substr(b, i - b));
        continue;
      }
      changed = true;
      if (r >= 0) unicode::append_utf8(out, static_cast<uint32_t>(r));
    }
    return changed;
  }

 private:
  F f_;
};
template <typename F>
std::unique_ptr<Normalizer> char_map(F f) {
  return std::make_unique<CharMap<F>>(f);
}

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> n) : list_(std::move(n)) {}
  bool apply(std::string_view in, std::string& out) const override {
    bool changed = false;
    std::string cur, next;
    for (auto& n : list_) {
      if (n->apply(changed ? std::string_view(cur) : in, next)) {
        cur.swap(next);
        changed = true;
      }
    }
    if (changed) out.swap(cur);
    return changed;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> list_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw error("normalizer: expected an object with a \"type\"");
  const std::string type = j["type"];
  const std::string where = "normalizer " + type;
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::Form::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Prepend") return std::make_unique<Prepend>(get_string(j, "prepend", where));
  if (type == "Replace")
    return std::make_unique<Replace>(get_pattern(j, where), get_string(j, "content", where));
  if (type == "Strip")
    return std::make_unique<Strip>(get_bool(j, "strip_left", true, where),
                                   get_bool(j, "strip_right", true, where));
  if (type == "StripAccents")  // drops combining marks (categories Mn, Mc, Me)
    return char_map([](uint32_t c) -> int64_t {
      const char* cat = unicode::category(c);
      return cat[0] == 'M' ? -1 : static_cast<int64_t>(c);
    });
  if (type == "Nmt")  // SentencePiece's nmt_nfkc control-char handling (without the NFKC)
    return char_map([](uint32_t c) -> int64_t {
      if ((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
          c == 0x8F || c == 0x9F)
        return -1;
      if (c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 ||
          (c >= 0x200B && c <= 0x200F) || c == 0x2028 || c == 0x2029 || c == 0x2581 ||
          c == 0xFEFF || c == 0xFFFD)
        return ' ';
      return static_cast<int64_t>(c);
    });
  if (type == "Sequence") {
    const json& list = field(j, "normalizers", where);
    if (!list.is_array()) throw error(where, ": \"normalizers\" must be an array");
    std::vector<std::unique_ptr<Normalizer>> v;
    for (const json& e : list)
      if (auto n = make_normalizer(e)) v.push_back(std::move(n));
    return std::make_unique<Sequence>(std::move(v));
  }
  throw error("normalizer type \"", type, "\" is not supported");
}

}  // namespace lowrank::tok
