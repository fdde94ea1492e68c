#include "chat_template_lexer.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "chat_template_strings.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

std::string where(int line, int col) { return "line " + std::to_string(line) + ", column " + std::to_string(col); }

namespace {

// Jinja turns \r\n and \r into \n and drops one trailing newline of the template.
std::string normalize_newlines(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t k = 0; k < src.size(); ++k) {
    if (src[k] == '\r') {
      out.push_back('\n');
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
    } else {
      out.push_back(src[k]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Python's unicode-escape decoding of a string literal's body (what Jinja applies).
std::string decode_escapes(std::string_view body, int line, int col) {
  std::string out;
  for (size_t k = 0; k < body.size(); ++k) {
    char c = body[k];
    if (c != '\\' || k + 1 == body.size()) {
      out.push_back(c);
      continue;
    }
    char e = body[++k];
    auto hex_code = [&](int digits) -> bool {
      char32_t v = 0;
      for (int d = 1; d <= digits; ++d) {
        if (k + d >= body.size() || !std::isxdigit(static_cast<unsigned char>(body[k + d]))) return false;
        char h = body[k + d];
        v = v * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      pystr::append_utf8(out, v);
      k += digits;
      return true;
    };
    // Python's one-character escapes (the string literal's own meaning of \\, \', \").
    static constexpr std::string_view kFrom = "\\'\"abfnrtv", kTo = "\\'\"\a\b\f\n\r\t\v";
    if (const size_t i = kFrom.find(e); i != std::string_view::npos) {
      out.push_back(kTo[i]);
      continue;
    }
    switch (e) {
      case '\n':
        break;  // line continuation
      case 'x':
        if (!hex_code(2)) throw lowrank::error("chat template ", where(line, col), ": truncated \\xXX escape");
        break;
      case 'u':
        if (!hex_code(4)) throw lowrank::error("chat template ", where(line, col), ": truncated \\uXXXX escape");
        break;
      case 'U':
        if (!hex_code(8)) throw lowrank::error("chat template ", where(line, col), ": truncated \\UXXXXXXXX escape");
        break;
      default:
        if (e >= '0' && e <= '7') {  // up to three octal digits
          int v = e - '0', n = 1;
          while (n < 3 && k + 1 < body.size() && body[k + 1] >= '0' && body[k + 1] <= '7') {
            v = v * 8 + (body[++k] - '0');
            ++n;
          }
          pystr::append_utf8(out, static_cast<char32_t>(v));
        } else {  // unknown escapes keep their backslash, as in Python
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t k = 0; k < src_.size(); ++k)
      if (src_[k] == '\n') line_starts_.push_back(k + 1);
  }

  std::vector<Token> run() {
    size_t n = src_.size();
    while (pos_ < n) {
      size_t p = find_tag_start(pos_);
      if (p == std::string::npos) {
        emit_text(src_.substr(pos_));
        pos_ = n;
        break;
      }
      char kind = src_[p + 1];
      char sign = (p + 2 < n && (src_[p + 2] == '-' || src_[p + 2] == '+')) ? src_[p + 2] : 0;
      size_t raw_end = kind == '%' ? match_raw_begin(p) : 0;
      std::string text = src_.substr(pos_, p - pos_);
      emit_text(optional_lstrip(std::move(text), sign, kind != '{'));
      if (raw_end) {
        lex_raw(p, raw_end);
      } else if (kind == '#') {
        lex_comment(p, sign);
      } else {
        lex_tag(p, kind, sign);
      }
    }
    Token eof{TokType::Eof, "end of template"};
    position(n, eof.line, eof.col);
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  std::string src_;
  std::vector<size_t> line_starts_;
  size_t pos_ = 0;
  bool line_starting_ = true;  // did the previous tag's match end with a newline?
  int cache_line_ = 0, cache_col_ = 1;
  size_t cache_at_ = 0;
  std::vector<Token> tokens_;

  [[noreturn]] void fail(size_t at, const std::string& msg) {
    int line, col;
    position(at, line, col);
    throw lowrank::error("chat template ", where(line, col), ": ", msg);
  }

  // Line and column (in characters) of a byte offset. Tokens come in order, so the column is
  // counted on from the previous answer when on the same line (long one-line templates).
  void position(size_t at, int& line, int& col) {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), at);
    line = static_cast<int>(it - line_starts_.begin());
    size_t line_start = *(it - 1);
    size_t from = line_start;
    col = 1;
    if (line == cache_line_ && at >= cache_at_) {
      from = cache_at_;
      col = cache_col_;
    }
    for (size_t k = from; k < at && k < src_.size(); ++k)
      if ((static_cast<unsigned char>(src_[k]) & 0xc0) != 0x80) ++col;
    cache_line_ = line;
    cache_at_ = at;
    cache_col_ = col;
  }

  Token make(TokType type, size_t at, std::string text = {}) {
    Token t{type, std::move(text)};
    position(at, t.line, t.col);
    return t;
  }

  size_t find_tag_start(size_t from) const {
    for (size_t k = src_.find('{', from); k != std::string::npos; k = src_.find('{', k + 1))
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    return std::string::npos;
  }

  void emit_text(std::string text) {
    if (text.empty()) return;
    Token t{TokType::Text, std::move(text)};
    position(pos_, t.line, t.col);
    tokens_.push_back(std::move(t));
  }

  // Jinja's OptionalLStrip: `-` strips all whitespace before the tag; otherwise (not `+`,
  // not a {{ }} tag) lstrip_blocks removes the indentation of a tag that starts its line.
  std::string optional_lstrip(std::string text, char sign, bool is_block_or_comment) {
    if (sign == '-') return pystr::strip(text, nullptr, false, true);
    if (sign != '+' && is_block_or_comment) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && l_pos < text.size() &&
          pystr::is_all_space(std::string_view(text).substr(l_pos)))
        text.resize(l_pos);
    }
    return text;
  }

  size_t skip_space(size_t k) const {
    while (k < src_.size()) {
      unsigned char c = static_cast<unsigned char>(src_[k]);
      if (c < 0x80) {
        if (!pystr::is_space(c)) break;
        ++k;
        continue;
      }
      size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
      std::u32string one = pystr::decode(std::string_view(src_).substr(k, len));
      if (one.size() != 1 || !pystr::is_space(one[0])) break;
      k += len;
    }
    return k;
  }

  bool word_at(size_t k, const char* word) const {
    size_t len = std::strlen(word);
    if (src_.compare(k, len, word) != 0) return false;
    size_t e = k + len;
    return e >= src_.size() || !(std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_');
  }

  // `{%[-+]? raw (-%}\s*|%})`: returns the position after it, or 0.
  size_t match_raw_begin(size_t p) const {
    size_t k = p + 2;
    if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) ++k;
    k = skip_space(k);
    if (!word_at(k, "raw")) return 0;
    k = skip_space(k + 3);
    if (src_.compare(k, 3, "-%}") == 0) return skip_space(k + 3);
    if (src_.compare(k, 2, "%}") == 0) return k + 2;
    return 0;
  }

  void lex_raw(size_t p, size_t body_start) {
    line_starting_ = body_start > 0 && src_[body_start - 1] == '\n';
    for (size_t q = src_.find("{%", body_start); q != std::string::npos; q = src_.find("{%", q + 1)) {
      size_t k = q + 2;
      char sign = 0;
      if (k < src_.size() && (src_[k] == '-' || src_[k] == '+')) sign = src_[k++];
      k = skip_space(k);
      if (!word_at(k, "endraw")) continue;
      k = skip_space(k + 6);
      size_t end;
      if (src_.compare(k, 3, "+%}") == 0) {
        end = k + 3;
      } else if (src_.compare(k, 3, "-%}") == 0) {
        end = skip_space(k + 3);
      } else if (src_.compare(k, 2, "%}") == 0) {
        end = k + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      pos_ = body_start;
      emit_text(optional_lstrip(src_.substr(body_start, q - body_start), sign, true));
      pos_ = end;
      line_starting_ = src_[end - 1] == '\n';
      return;
    }
    fail(p, "missing end of raw directive ({% endraw %})");
  }

  void lex_comment(size_t p, char sign) {
    size_t content = p + 2 + (sign ? 1 : 0);
    size_t q = src_.find("#}", content);
    if (q == std::string::npos) fail(p, "missing end of comment tag (#})");
    size_t end = q + 2;
    if (q > content && src_[q - 1] == '-') {
      end = skip_space(end);
    } else if (!(q > content && src_[q - 1] == '+')) {
      if (end < src_.size() && src_[end] == '\n') ++end;  // trim_blocks
    }
    pos_ = end;
    line_starting_ = src_[end - 1] == '\n';
  }

  void lex_tag(size_t p, char kind, char sign) {
    bool block = kind == '%';
    tokens_.push_back(make(block ? TokType::BlockBegin : TokType::VarBegin, p, block ? "{%" : "{{"));
    size_t k = p + 2 + (sign ? 1 : 0);
    std::vector<char> brackets;
    const size_t n = src_.size();
    while (true) {
      if (k >= n)
        fail(p, block ? "unexpected end of template: unclosed {% tag" : "unexpected end of template: unclosed {{ tag");
      if (brackets.empty()) {
        size_t end = 0;
        if (block) {
          if (src_.compare(k, 3, "+%}") == 0) {
            end = k + 3;
          } else if (src_.compare(k, 3, "-%}") == 0) {
            end = skip_space(k + 3);
          } else if (src_.compare(k, 2, "%}") == 0) {
            end = k + 2;
            if (end < n && src_[end] == '\n') ++end;  // trim_blocks
          }
        } else {
          if (src_.compare(k, 3, "-}}") == 0)
            end = skip_space(k + 3);
          else if (src_.compare(k, 2, "}}") == 0)
            end = k + 2;
        }
        if (end) {
          tokens_.push_back(make(block ? TokType::BlockEnd : TokType::VarEnd, k, block ? "%}" : "}}"));
          pos_ = end;
          line_starting_ = src_[end - 1] == '\n';
          return;
        }
      }
      size_t after_space = skip_space(k);
      if (after_space != k) {
        k = after_space;
        continue;
      }
      k = lex_token(k, brackets);
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  // Digits with optional single underscores between them: (\d+_)*\d+
  size_t digits(size_t k) const {
    size_t start = k;
    while (k < src_.size()) {
      if (is_digit(src_[k])) {
        ++k;
      } else if (src_[k] == '_' && k > start && k + 1 < src_.size() && is_digit(src_[k + 1])) {
        ++k;
      } else {
        break;
      }
    }
    return k;
  }

  size_t lex_token(size_t k, std::vector<char>& brackets) {
    const size_t n = src_.size();
    char c = src_[k];
    if (is_digit(c)) return lex_number(k);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = k;
      while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
      tokens_.push_back(make(TokType::Name, k, src_.substr(k, e - k)));
      return e;
    }
    if (c == '\'' || c == '"') {
      size_t e = k + 1;
      while (e < n && src_[e] != c) e += (src_[e] == '\\') ? 2 : 1;
      if (e >= n) fail(k, "unterminated string literal");
      Token t = make(TokType::String, k);
      t.text = decode_escapes(std::string_view(src_).substr(k + 1, e - k - 1), t.line, t.col);
      tokens_.push_back(std::move(t));
      return e + 1;
    }
    static const char* two[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : two)
      if (src_.compare(k, 2, op) == 0) {
        tokens_.push_back(make(TokType::Op, k, op));
        return k + 2;
      }
    if (std::strchr("+-/*%~[](){}><=.:|,;", c) && c != 0) {
      if (c == '(' || c == '[' || c == '{') {
        brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      } else if (c == ')' || c == ']' || c == '}') {
        if (brackets.empty()) fail(k, std::string("unexpected '") + c + "'");
        if (brackets.back() != c) fail(k, std::string("unexpected '") + c + "', expected '" + brackets.back() + "'");
        brackets.pop_back();
      }
      tokens_.push_back(make(TokType::Op, k, std::string(1, c)));
      return k + 1;
    }
    // Quote the whole (UTF-8) character, or its byte value if it is not valid UTF-8.
    std::u32string one = pystr::decode(std::string_view(src_).substr(k, 4));
    std::string shown;
    if (!one.empty() && one[0] != 0xfffd && one[0] >= 0x20)
      pystr::append_utf8(shown, one[0]);
    else
      shown = "\\x" + std::string(1, "0123456789abcdef"[(static_cast<unsigned char>(c) >> 4) & 0xf]) +
              "0123456789abcdef"[static_cast<unsigned char>(c) & 0xf];
    fail(k, "unexpected character '" + shown + "' in tag");
  }

  size_t lex_number(size_t k) {
    const size_t n = src_.size();
    // Prefixed integers (0x.., 0o.., 0b..).
    if (src_[k] == '0' && k + 1 < n && std::strchr("xXoObB", src_[k + 1])) {
      int base = std::tolower(src_[k + 1]) == 'x' ? 16 : std::tolower(src_[k + 1]) == 'o' ? 8 : 2;
      size_t e = k + 2;
      std::string digits_only;
      while (e < n && (std::isxdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
        if (src_[e] != '_') digits_only.push_back(src_[e]);
        ++e;
      }
      Token t = make(TokType::Integer, k, src_.substr(k, e - k));
      try {
        t.ival = std::stoll(digits_only, nullptr, base);
      } catch (const std::exception&) {
        fail(k, "bad integer literal '" + t.text + "'");
      }
      tokens_.push_back(std::move(t));
      return e;
    }
    size_t e = digits(k);
    bool is_float = false;
    size_t f = e;
    bool after_dot = k > 0 && src_[k - 1] == '.';  // `x.0.1` is two subscripts, not a float
    if (!after_dot && f + 1 < n && src_[f] == '.' && is_digit(src_[f + 1])) {
      f = digits(f + 1);
      is_float = true;
    }
    if (!after_dot && f < n && (src_[f] == 'e' || src_[f] == 'E')) {
      size_t g = f + 1;
      if (g < n && (src_[g] == '+' || src_[g] == '-')) ++g;
      if (g < n && is_digit(src_[g])) {
        f = digits(g);
        is_float = true;
      }
    }
    if (is_float) e = f;
    std::string spelled = src_.substr(k, e - k), clean;
    for (char ch : spelled)
      if (ch != '_') clean.push_back(ch);
    Token t = make(is_float ? TokType::Float : TokType::Integer, k, spelled);
    try {
      if (is_float)
        t.fval = std::stod(clean);
      else
        t.ival = std::stoll(clean);
    } catch (const std::exception&) {
      fail(k, "number literal out of range: " + spelled);
    }
    tokens_.push_back(std::move(t));
    return e;
  }
};

}  // namespace

std::vector<Token> lex(std::string_view source) { return Lexer(normalize_newlines(source)).run(); }

}  // namespace lowrank::tok::jinja
