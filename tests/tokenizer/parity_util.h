#pragma once
// Shared by the parity tests: where the test data is, and comparing our ids with reference
// files (one JSON line per corpus document, as tests/reference/make_tokenizer_refs.py writes).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::tok::testing {

namespace fs = std::filesystem;

inline fs::path source_dir() { return fs::path(LOWRANK_SOURCE_DIR); }
inline fs::path data_dir() { return source_dir() / "tests" / "data"; }
inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && *ci && std::string(ci) != "false" && std::string(ci) != "0";
}

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The tokenizer `name` (llama3, qwen3, llama2, gpt2) from tests/data, or nullopt when the data
// is missing (then the caller skips, or fails in CI).
inline fs::path tokenizer_path(const std::string& name) {
  return data_dir() / "tokenizers" / name;
}

#define LOWRANK_REQUIRE_TEST_DATA()                                                           \
  do {                                                                                        \
    if (!::std::filesystem::exists(::lowrank::tok::testing::data_dir() / "corpus")) {         \
      if (::lowrank::tok::testing::in_ci())                                                   \
        FAIL() << "tests/data is missing: run scripts/fetch-test-data.sh";                    \
      GTEST_SKIP() << "tests/data is missing: run scripts/fetch-test-data.sh";                \
    }                                                                                         \
  } while (0)

inline std::string show_tokens(const Tokenizer& t, const std::vector<int32_t>& ids, size_t at) {
  std::string s;
  size_t a = at >= 5 ? at - 5 : 0, b = std::min(ids.size(), at + 6);
  for (size_t i = a; i < b; ++i) {
    if (i == at) s += ">>";
    s += std::to_string(ids[i]) + ":" + nlohmann::json(t.id_to_token(ids[i])).dump(
        -1, ' ', false, nlohmann::json::error_handler_t::replace) + " ";
  }
  return s;
}

// Where two id lists first differ, with the tokens around it.
inline std::string describe_mismatch(const Tokenizer& t, const std::vector<int32_t>& want,
                                     const std::vector<int32_t>& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  std::ostringstream os;
  os << "first difference at token " << i << " (want " << want.size() << " tokens, got "
     << got.size() << ")\n    want: " << show_tokens(t, want, i)
     << "\n    got:  " << show_tokens(t, got, i);
  return os.str();
}

// Compares two texts; on a difference, reports where with a little context (not the whole
// document).
inline bool same_text(const std::string& got, const std::string& want, const std::string& label) {
  if (got == want) return true;
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  size_t a = i >= 30 ? i - 30 : 0;
  auto clip = [&](const std::string& s) {
    return nlohmann::json(s.substr(a, 60)).dump(-1, ' ', false,
                                                nlohmann::json::error_handler_t::replace);
  };
  ADD_FAILURE() << label << ": texts differ at byte " << i << " (want " << want.size()
                << " bytes, got " << got.size() << ")\n    want: " << clip(want)
                << "\n    got:  " << clip(got);
  return false;
}

struct ParityResult {
  size_t docs = 0, exact = 0, special_exact = 0, decode_exact = 0, decode_checked = 0;
};

// Compares one reference record (ids, and with `full` also add_special_tokens ids and the
// decodes) with what `t` does on `text`; each difference is a test failure naming `label`.
inline void check_record(const Tokenizer& t, const nlohmann::json& j, const std::string& text,
                         const std::string& label, bool full, ParityResult& r) {
  ++r.docs;
  auto want = j["ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> got;
  try {
    got = t.encode(text, false);
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": " << e.what();
    return;
  }
  if (got == want)
    ++r.exact;
  else
    ADD_FAILURE() << label << ": " << describe_mismatch(t, want, got);
  if (!full) return;
  std::vector<int32_t> want_sp;
  bool has_sp = j.contains("ids_special") || j.contains("special");
  if (j.contains("ids_special")) {
    want_sp = j["ids_special"].get<std::vector<int32_t>>();
  } else if (j.contains("special")) {
    want_sp = j["special"]["prefix"].get<std::vector<int32_t>>();
    want_sp.insert(want_sp.end(), want.begin(), want.end());
    auto suf = j["special"]["suffix"].get<std::vector<int32_t>>();
    want_sp.insert(want_sp.end(), suf.begin(), suf.end());
  }
  if (has_sp) {
    auto got_sp = t.encode(text, true);
    if (got_sp == want_sp)
      ++r.special_exact;
    else
      ADD_FAILURE() << label << " add_special_tokens: " << describe_mismatch(t, want_sp, got_sp);
  }
  // Decoding the reference ids (unless HF itself failed to decode them).
  if (j.contains("decode_error")) return;
  ++r.decode_checked;
  std::string want_dec = j.contains("decode") ? j["decode"].get<std::string>() : text;
  std::string want_skip = j.contains("decode_skip") ? j["decode_skip"].get<std::string>() : want_dec;
  bool ok = same_text(t.decode(want, false), want_dec, label + ": decode");
  ok = same_text(t.decode(want, true), want_skip, label + ": decode skip_special_tokens") && ok;
  if (has_sp) {
    std::string want_dsp =
        j.contains("decode_special") ? j["decode_special"].get<std::string>() : want_dec;
    ok = same_text(t.decode(want_sp, false), want_dsp, label + ": decode special") && ok;
  }
  r.decode_exact += ok;
}

// Compares every document of a refs file.
inline ParityResult check_refs(const Tokenizer& t, const fs::path& refs, bool full) {
  ParityResult r;
  std::ifstream in(refs);
  std::string line;
  std::getline(in, line);  // header
  size_t index = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    std::string doc = j["doc"];
    std::string text = slurp(data_dir() / "corpus" / (doc + ".txt"));
    std::string label = refs.filename().string() + " doc " + std::to_string(index++) + " (" + doc + ")";
    if (j.contains("bytes") && j["bytes"].get<size_t>() != text.size()) {
      ADD_FAILURE() << label << ": corpus file has " << text.size() << " bytes, refs expect "
                    << j["bytes"];
      continue;
    }
    check_record(t, j, text, label, full, r);
  }
  return r;
}

}  // namespace lowrank::tok::testing
