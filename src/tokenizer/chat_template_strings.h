#pragma once
// Python str semantics on UTF-8 std::strings, for the chat-template interpreter: templates index,
// slice, strip and case-map strings the way Python does (by code point, Unicode whitespace), and
// HF chat templates rely on that (e.g. Qwen3's content.split('</think>')[-1].lstrip('\n')).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok::jinja::pystr {

// Code points of a UTF-8 string; an invalid byte decodes to U+FFFD.
std::u32string decode(std::string_view s);
std::string encode(std::u32string_view s);
void append_utf8(std::string& out, char32_t c);
bool is_ascii(std::string_view s);
// len(s): number of code points.
int64_t length(std::string_view s);

// str.isspace() for one code point (also what Python's re `\s` matches).
bool is_space(char32_t c);
bool is_all_space(std::string_view s);  // true for "" as well

// str.strip/lstrip/rstrip: `chars` == nullptr strips whitespace, else any code point in *chars.
std::string strip(std::string_view s, const std::string* chars, bool left, bool right);
// str.split(sep, maxsplit) and str.rsplit; sep == nullptr splits on whitespace runs.
std::vector<std::string> split(std::string_view s, const std::string* sep, int64_t maxsplit);
std::vector<std::string> rsplit(std::string_view s, const std::string* sep, int64_t maxsplit);
std::vector<std::string> splitlines(std::string_view s, bool keepends);
// str.replace(old, new, count); count < 0 replaces all.
std::string replace(std::string_view s, std::string_view old_s, std::string_view new_s, int64_t count);
int64_t count(std::string_view s, std::string_view sub);
// str.find / str.rfind, in code points; -1 when absent.
int64_t find(std::string_view s, std::string_view sub, bool reverse);

// Case mapping for Latin, Greek and Cyrillic (other scripts pass through unchanged).
std::string upper(std::string_view s);
std::string lower(std::string_view s);
std::string title(std::string_view s);       // str.title()
std::string capitalize(std::string_view s);  // str.capitalize()
bool is_cased(char32_t c);
bool is_upper_char(char32_t c);
bool is_lower_char(char32_t c);

// Python repr() of a string: quotes chosen like Python, non-printables escaped.
std::string repr(std::string_view s);

// Python slicing: normalises start/stop/step (step != 0) for a sequence of length n and
// returns the selected indices in order.
std::vector<int64_t> slice_indices(int64_t n, const int64_t* start, const int64_t* stop, int64_t step);

}  // namespace lowrank::tok::jinja::pystr
