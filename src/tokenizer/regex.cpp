// PCRE2 (JIT) behind the Oniguruma patterns of tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"

namespace lowrank::tok {

// Oniguruma's \s (Unicode White_Space) differs from PCRE2's UCP \s (which adds U+180E), and
// Oniguruma's \h is a hex digit where PCRE2's is horizontal space: spell both out.
static const char* const kSpaceItems =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
static const char* const kHexItems = "0-9a-fA-F";

std::string Regex::translate(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      const char* items = n == 's' || n == 'S' ? kSpaceItems : n == 'h' || n == 'H' ? kHexItems
                                                                                    : nullptr;
      if (items) {
        bool negated = n == 'S' || n == 'H';
        if (in_class && negated)
          throw error("regex: \\", n, " inside a character class is not supported: ", p);
        if (in_class) {
          out += items;
        } else {
          out += negated ? "[^" : "[";
          out += items;
          out += "]";
        }
        ++i;
        continue;
      }
      out += c;
      out += n;
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') { out += '^'; ++i; }
      if (i + 1 < p.size() && p[i + 1] == ']') { out += "\\]"; ++i; }
      continue;
    }
    if (in_class && c == '[') {
      // Nested class (Oniguruma allows [a[bc]]): PCRE2 only knows POSIX [:name:] here.
      if (i + 1 < p.size() && p[i + 1] == ':') { out += c; continue; }
      throw error("regex: nested character classes are not supported: ", p);
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

std::string Regex::escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-#&~ \t\n").find(c) != std::string_view::npos) {
      if (c == '\t') { out += "\\t"; continue; }
      if (c == '\n') { out += "\\n"; continue; }
      out += '\\';
    }
    out += c;
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

namespace {
// Per-thread match data and JIT stack: matching is then lock-free and allocation-free.
struct ThreadState {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* ctx = pcre2_match_context_create(nullptr);
  ThreadState() { pcre2_jit_stack_assign(ctx, nullptr, stack); }
  ~ThreadState() {
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(md);
  }
};
ThreadState& thread_state() {
  thread_local ThreadState st;
  return st;
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& what) : impl_(new Impl) {
  std::string pcre = translate(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre.data()), pcre.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw error(what, ": bad regex \"", pattern, "\" at offset ", off, ": ",
                reinterpret_cast<const char*>(msg));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}

void Regex::find_all(std::string_view s, std::vector<Match>& out) const {
  ThreadState& st = thread_state();
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= s.size()) {
    int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, s.size(), pos, 0, st.md, st.ctx)
                        : pcre2_match(impl_->code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK,
                                      st.md, st.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw error("regex match failed: ", reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    size_t b = ov[0], e = ov[1];
    if (b == e && have_last && last_end == e) {
      // Empty match where the previous one ended: step one character and search again.
      if (pos >= s.size()) break;
      pos += unicode::utf8_len(static_cast<unsigned char>(s[pos]));
      continue;
    }
    out.push_back({b, e});
    have_last = true;
    last_end = e;
    pos = e;
    if (b == e && pos >= s.size()) break;
  }
}

}  // namespace lowrank::tok
