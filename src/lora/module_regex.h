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

}  // namespace lowrank::lora
