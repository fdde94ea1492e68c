#pragma once
// Python's re.fullmatch(pattern, text), which PEFT applies to module paths (a target_modules
// string, rank_pattern / alpha_pattern keys), on PCRE2: the same syntax for the patterns PEFT
// users write, linear-time safeguards (match limits) instead of std::regex's deep recursion.
#include <optional>
#include <string>
#include <string_view>

namespace lowrank::lora {

// nullopt when `pattern` does not compile (with the reason in *error when given); otherwise whether
// it matches the whole of `text`. A match that hits PCRE2's limits counts as no match.
std::optional<bool> regex_full_match(const std::string& pattern, std::string_view text,
                                     std::string* error = nullptr);

// Python's re.match(pattern, text).group(1): a match anchored at the start of `text` only. nullopt
// when nothing matches, or when `pattern` does not compile (then *error, when given, says why).
std::optional<std::string> regex_match_group1(const std::string& pattern, std::string_view text,
                                              std::string* error = nullptr);

}  // namespace lowrank::lora
