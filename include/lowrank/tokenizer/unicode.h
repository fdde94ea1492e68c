#pragma once
// UTF-8 and the bits of Unicode the tokenizers need: normalization forms, lowercase, general
// categories and Rust's char predicates (HF tokenizers is written in Rust, and its components
// are defined by char::is_whitespace, char::is_numeric, ...). Data: unicode_tables.cpp.
#include <cstdint>
#include <string>
#include <string_view>

namespace lowrank::tok::unicode {

// Decodes the code point at s[i] (valid UTF-8 assumed) and advances i.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) { ++i; return c; }
  if (c < 0xE0) {
    uint32_t cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    uint32_t cp = ((c & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                  (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  uint32_t cp = ((c & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}
// Length in bytes of the UTF-8 sequence that starts with byte c.
inline size_t utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }
void append_utf8(std::string& out, uint32_t cp);

// Returns the byte offset of the first invalid UTF-8 sequence, or npos when s is valid
// (overlong forms, surrogates and code points above U+10FFFF are invalid, as in Rust).
size_t find_invalid_utf8(std::string_view s);
// Invalid sequences replaced by U+FFFD (as Rust's String::from_utf8_lossy does).
std::string utf8_lossy(std::string_view bytes);

enum class Form { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, Form form);
std::string lowercase(std::string_view s);  // per-char full mapping (Rust char::to_lowercase)

// General category as its two-letter name ("Lu", "Nd", ...); "Cn" when unassigned.
const char* category(uint32_t cp);
bool is_whitespace(uint32_t cp);    // White_Space property (Rust char::is_whitespace)
bool is_numeric(uint32_t cp);       // Nd | Nl | No (Rust char::is_numeric)
bool is_punctuation(uint32_t cp);   // ASCII punctuation or P* (HF's Punctuation pre-tokenizer)
bool is_word_char(uint32_t cp);     // Rust regex \w: Alphabetic, marks, Nd, Pc, ZWJ/ZWNJ
// The same as a PCRE2 character class.
inline constexpr const char* kWordClass =
    "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
const char* unicode_version();

}  // namespace lowrank::tok::unicode
