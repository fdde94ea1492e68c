#pragma once
// Regexes of tokenizer.json (written for Oniguruma, which HF tokenizers uses) run on PCRE2 with
// JIT. The few escapes whose meaning differs between the two are rewritten (see regex.cpp).
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok {

class Regex {
 public:
  // Throws lowrank::Error (naming `what`, e.g. "pre_tokenizer Split") if it does not compile.
  Regex(const std::string& onig_pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  struct Match { size_t start, end; };
  // Every non-overlapping match, left to right, as Rust's onig find_iter yields them (an empty
  // match right after the previous match is skipped). `s` must be valid UTF-8.
  void find_all(std::string_view s, std::vector<Match>& out) const;

  static std::string escape(std::string_view literal);
  // Rewrites an Oniguruma pattern into PCRE2 syntax with the same meaning (exposed for tests).
  static std::string translate(std::string_view onig_pattern);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowrank::tok
