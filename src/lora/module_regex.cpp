#include "module_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <map>
#include <memory>
#include <mutex>

namespace lowrank::lora {
namespace {

struct Compiled {
  pcre2_code* code = nullptr;  // null: the pattern does not compile
  std::string error;
};

// Patterns compiled once per process (a config has a handful; they are matched per module).
const Compiled& compiled(const std::string& pattern) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::string, Compiled>();  // leaked: used until exit
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(pattern);
  if (it != cache->end()) return it->second;
  Compiled c;
  int err = 0;
  PCRE2_SIZE offset = 0;
  c.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF, &err, &offset,
                         nullptr);
  if (!c.code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    c.error = std::string(reinterpret_cast<const char*>(msg)) + " at offset " + std::to_string(offset);
  }
  return cache->emplace(pattern, std::move(c)).first->second;
}

using MatchData = std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)>;

// Matches `text` from its start (and to its end with PCRE2_ENDANCHORED in `options`); null when
// the pattern does not compile (*error says why) or nothing matches (no match, a limit hit or
// invalid UTF-8 in the path).
MatchData match(const std::string& pattern, std::string_view text, uint32_t options, bool* compiles,
                std::string* error) {
  const Compiled& c = compiled(pattern);
  *compiles = c.code != nullptr;
  if (!c.code) {
    if (error) *error = c.error;
    return MatchData(nullptr, &pcre2_match_data_free);
  }
  MatchData md(pcre2_match_data_create_from_pattern(c.code, nullptr), &pcre2_match_data_free);
  const int rc = pcre2_match(c.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_ANCHORED | options, md.get(), nullptr);
  if (rc < 0) md.reset();
  return md;
}

}  // namespace

std::optional<bool> regex_full_match(const std::string& pattern, std::string_view text, std::string* error) {
  bool compiles = false;
  const MatchData md = match(pattern, text, PCRE2_ENDANCHORED, &compiles, error);
  if (!compiles) return std::nullopt;
  return md != nullptr;
}

std::optional<std::string> regex_match_group1(const std::string& pattern, std::string_view text,
                                              std::string* error) {
  bool compiles = false;
  const MatchData md = match(pattern, text, 0, &compiles, error);
  if (!md || pcre2_get_ovector_count(md.get()) < 2) return std::nullopt;
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
  if (ov[2] == PCRE2_UNSET) return std::nullopt;  // the group took no part in the match
  return std::string(text.substr(ov[2], ov[3] - ov[2]));
}

}  // namespace lowrank::lora
