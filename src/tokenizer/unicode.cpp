// UTF-8 helpers, Unicode normalization (UAX #15) and character predicates over the generated
// tables in unicode_tables.cpp.
#include "lowrank/tokenizer/unicode.h"

#include <algorithm>
#include <vector>

#include "regex.h"
#include "unicode_tables.h"

namespace lowrank::tok::unicode {
namespace T = unicode_tables;

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid there.
static size_t valid_seq_len(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  size_t n = s.size() - i;
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return n >= 2 && (b(i + 1) & 0xC0) == 0x80 ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (b(i + 1) & 0xC0) != 0x80 || (b(i + 2) & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // surrogates
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (b(i + 1) & 0xC0) != 0x80 || (b(i + 2) & 0xC0) != 0x80 ||
        (b(i + 3) & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    size_t n = valid_seq_len(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t n = valid_seq_len(s, i);
    if (n) {
      out.append(s.data() + i, n);
      i += n;
      continue;
    }
    // Skip the maximal prefix of a valid sequence (what Rust replaces by one U+FFFD).
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t want = c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c < 0xF5 ? 4 : 1;
    size_t k = 1;
    while (k < want && i + k < s.size()) {
      unsigned char d = static_cast<unsigned char>(s[i + k]);
      unsigned char lo = 0x80, hi = 0xBF;
      if (k == 1) {
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
      }
      if (d < lo || d > hi) break;
      ++k;
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

// ---- normalization ----

static constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
static constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                          kSCount = kLCount * kNCount;

static uint8_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto* end = T::kCcc + T::kCccCount;
  auto* it = std::upper_bound(T::kCcc, end, cp,
                              [](uint32_t v, const T::CccRange& r) { return v < r.first; });
  if (it == T::kCcc) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

static void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp - kSBase < kSCount) {
    uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xA0) {
    auto* end = T::kDecomp + T::kDecompCount;
    auto* it = std::lower_bound(T::kDecomp, end, cp,
                                [](const T::Decomp& d, uint32_t v) { return d.cp < v; });
    if (it != end && it->cp == cp) {
      uint32_t off = compat ? it->compat_off : it->canon_off;
      uint32_t len = compat ? it->compat_len : it->canon_len;
      out.insert(out.end(), T::kDecompData + off, T::kDecompData + off + len);
      return;
    }
  }
  out.push_back(cp);
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a - kLBase < kLCount && b - kVBase < kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a - kSBase < kSCount && (a - kSBase) % kTCount == 0 && b - kTBase - 1 < kTCount - 1)
    return a + (b - kTBase);
  auto* end = T::kCompose + T::kComposeCount;
  auto* it = std::lower_bound(T::kCompose, end, std::pair{a, b},
                              [](const T::Compose& c, std::pair<uint32_t, uint32_t> v) {
                                return c.first < v.first ||
                                       (c.first == v.first && c.second < v.second);
                              });
  if (it != end && it->first == a && it->second == b) return it->composite;
  return 0;
}

std::string normalize(std::string_view s, Form form) {
  // ASCII is invariant under every normalization form.
  bool ascii = true;
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) { ascii = false; break; }
  if (ascii) return std::string(s);

  bool compat = form == Form::NFKC || form == Form::NFKD;
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) decompose(next_cp(s, i), compat, cps);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc(cps[i]) == 0) { ++i; continue; }
    size_t j = i;
    while (j < cps.size() && ccc(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  if (form == Form::NFC || form == Form::NFKC) {
    // Canonical composition: each char combines with the last starter unless blocked.
    std::vector<uint32_t> outv;
    outv.reserve(cps.size());
    size_t starter = SIZE_MAX;
    int last_ccc = -1;
    for (uint32_t cp : cps) {
      int c = ccc(cp);
      if (starter != SIZE_MAX && (last_ccc < c || (last_ccc == 0 && c == 0 &&
                                                   outv.size() == starter + 1))) {
        // Not blocked: either adjacent to the starter or every char between has lower ccc.
        if (uint32_t comp = compose_pair(outv[starter], cp)) {
          outv[starter] = comp;
          continue;
        }
      }
      if (c == 0) {
        starter = outv.size();
        last_ccc = 0;
      } else {
        last_ccc = c;
      }
      outv.push_back(cp);
    }
    cps.swap(outv);
  }
  std::string out;
  out.reserve(s.size() + 8);
  for (uint32_t cp : cps) append_utf8(out, cp);
  return out;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : static_cast<char>(c));
      ++i;
      continue;
    }
    uint32_t cp = next_cp(s, i);
    auto* end = T::kLower + T::kLowerCount;
    auto* it = std::lower_bound(T::kLower, end, cp,
                                [](const T::Mapping& m, uint32_t v) { return m.cp < v; });
    if (it != end && it->cp == cp) {
      for (uint32_t k = 0; k < it->len; ++k) append_utf8(out, T::kLowerData[it->off + k]);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

// ---- categories ----

static const char* const kCatNames[] = {
    "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
    "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};

static uint8_t cat_index(uint32_t cp) {
  auto* end = T::kCategory + T::kCategoryCount;
  auto* it = std::upper_bound(T::kCategory, end, cp,
                              [](uint32_t v, const T::CatRange& r) { return v < r.first; });
  if (it == T::kCategory) return 0;
  --it;
  return cp <= it->last ? it->cat : 0;
}

const char* category(uint32_t cp) { return kCatNames[cat_index(cp)]; }

bool is_whitespace(uint32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  uint8_t c = cat_index(cp);
  return c >= 9 && c <= 11;
}

bool is_punctuation(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
                        (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
  uint8_t c = cat_index(cp);
  return c >= 12 && c <= 18;
}

bool is_word_char(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           cp == '_';
  // Rust's \w needs the Alphabetic property (letters, Nl and Other_Alphabetic marks and
  // symbols such as circled letters), which PCRE2 knows.
  static const Regex word("\\A" + std::string(kWordClass) + "\\z", "\\w");
  std::string s;
  append_utf8(s, cp);
  std::vector<Regex::Match> m;
  word.find_all(s, m);
  return !m.empty();
}

const char* unicode_version() { return T::kUnicodeVersion; }

}  // namespace lowrank::tok::unicode
