// Parity with HF tokenizers for the components the four real tokenizers do not use: synthetic
// tokenizers (tests/fixtures/tokenizer/synthetic.json: a real base with other normalizers,
// pre-tokenizers, added-token rules, post-processors, decoders, BPE options), checked against
// tests/fixtures/tokenizer/refs_synthetic.jsonl from tests/reference/make_tokenizer_refs.py.
#include <gtest/gtest.h>

#include <map>

#include "lowrank/core/error.h"
#include "parity_util.h"

namespace lowrank::tok::testing {
namespace {

using nlohmann::json;

fs::path fixtures() { return source_dir() / "tests" / "fixtures" / "tokenizer"; }

// Built exactly as make_tokenizer_refs.py's synthetic_json() does.
std::string synthetic_json(const json& spec, const json& v) {
  json d;
  if (v["base"] == "gpt2") {
    d = spec["gpt2_skeleton"];
    d["model"]["vocab"] = json::parse(slurp(tokenizer_path("gpt2") / "vocab.json"));
    std::istringstream ms(slurp(tokenizer_path("gpt2") / "merges.txt"));
    json merges = json::array();
    for (std::string l; std::getline(ms, l);) {
      while (!l.empty() && (l.back() == '\r' || l.back() == '\n')) l.pop_back();
      if (!l.empty() && l.rfind("#version", 0) != 0) merges.push_back(l);
    }
    d["model"]["merges"] = merges;
  } else {
    d = json::parse(slurp(tokenizer_path(v["base"].get<std::string>()) / "tokenizer.json"));
  }
  if (v.contains("set"))
    for (auto it = v["set"].begin(); it != v["set"].end(); ++it) d[it.key()] = it.value();
  if (v.contains("model")) d["model"].update(v["model"]);
  if (v.contains("added_tokens"))
    for (const json& a : v["added_tokens"]) d["added_tokens"].push_back(a);
  return d.dump();
}

TEST(SyntheticParity, AllVariantsExact) {
  LOWRANK_REQUIRE_TEST_DATA();
  fs::path refs = fixtures() / "refs_synthetic.jsonl";
  if (!fs::exists(refs))  // generated on the GPU box; skip until committed
    GTEST_SKIP() << refs << " is missing (make_tokenizer_refs.py --only-synthetic)";
  json spec = json::parse(slurp(fixtures() / "synthetic.json"));
  std::ifstream in(refs);
  std::string line;
  std::getline(in, line);
  json header = json::parse(line);
  std::map<std::string, Tokenizer> toks;
  std::map<std::string, ParityResult> results;
  for (const json& v : spec["variants"]) {
    std::string name = v["name"];
    auto st = header["variants"].find(name);
    if (st == header["variants"].end()) {
      ADD_FAILURE() << "variant " << name << " is not in " << refs.filename() << " (regenerate it)";
      continue;
    }
    if (*st != "ok") {  // HF rejects the configuration: so must we
      EXPECT_THROW(Tokenizer::from_json(synthetic_json(spec, v)), lowrank::Error) << name;
      continue;
    }
    try {
      toks.emplace(name, Tokenizer::from_json(synthetic_json(spec, v), "", name));
    } catch (const Error& e) {
      ADD_FAILURE() << "variant " << name << ": " << e.what();
    }
  }
  while (std::getline(in, line)) {
    json j = json::parse(line);
    std::string name = j["variant"], doc = j["doc"];
    auto t = toks.find(name);
    if (t == toks.end()) continue;
    if (j.contains("error")) {  // HF failed on this document: nothing to compare
      std::printf("[ synthetic ] %s %s: HF error %s\n", name.c_str(), doc.c_str(),
                  j["error"].get<std::string>().c_str());
      continue;
    }
    std::string text = slurp(data_dir() / "corpus" / (doc + ".txt"));
    check_record(t->second, j, text, name + " " + doc, true, results[name]);
  }
  for (auto& [name, r] : results)
    std::printf("[ synthetic ] %-36s %zu/%zu exact, %zu special, %zu/%zu decodes\n", name.c_str(),
                r.exact, r.docs, r.special_exact, r.decode_exact, r.decode_checked);
}

}  // namespace
}  // namespace lowrank::tok::testing
