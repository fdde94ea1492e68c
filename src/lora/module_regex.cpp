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

}  // namespace

std::optional<bool> regex_full_match(const std::string& pattern, std::string_view text, std::string* error) {
  const Compiled& c = compiled(pattern);
  if (!c.code) {
    if (error) *error = c.error;
    return std::nullopt;
  }
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(c.code, nullptr), &pcre2_match_data_free);
  const int rc = pcre2_match(c.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_ANCHORED | PCRE2_ENDANCHORED, md.get(), nullptr);
  return rc >= 0;  // no match, a limit hit or invalid UTF-8 in the path: not a match
}

}  // namespace lowrank::lora
