// lowrank tokenize: text (or a JSONL file of {"text": ...}) to token ids.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace lowrank::cli {
namespace {

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

struct TokenizeArgs {
  std::string tokenizer, text, input;
  bool add_special = false;
};

int run_tokenize(const TokenizeArgs& a) {
  tok::Tokenizer t = tok::Tokenizer::load(a.tokenizer);
  if (a.input.empty()) {
    std::printf("%s\n", ids_json(t.encode(a.text, a.add_special)).c_str());
    return 0;
  }
  std::ifstream in(a.input, std::ios::binary);
  if (!in) throw error(a.input, ": cannot open");
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = io::parse_json(line, detail::concat(a.input, ":", n));
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw error(a.input, ":", n, ": expected an object with a string \"text\"");
    std::vector<int32_t> ids;
    try {
      ids = t.encode(j["text"].get<std::string>(), a.add_special);
    } catch (const Error& e) {
      throw error(a.input, ":", n, ": ", e.what());
    }
    std::printf("{\"ids\": %s}\n", ids_json(ids).c_str());
  }
  return 0;
}

const RegisterCommand reg{Command{
    "tokenize", "Print the token ids of a text (a JSON array) or of each line of a JSONL file",
    [](CLI::App& sub) -> std::function<int()> {
      auto a = std::make_shared<TokenizeArgs>();
      sub.add_option("--tokenizer", a->tokenizer,
                     "tokenizer.json, or a folder with tokenizer.json or vocab.json+merges.txt")
          ->required();
      auto* text = sub.add_option("--text", a->text, "the text to tokenize");
      auto* input = sub.add_option("--input", a->input, "JSONL file, one {\"text\": ...} a line");
      text->excludes(input);
      sub.add_flag("--add-special-tokens", a->add_special,
                   "add the special tokens of the post-processor (e.g. BOS)");
      return [a, text, input]() -> int {
        if (!*text && !*input) throw error("tokenize: give --text or --input");
        return run_tokenize(*a);
      };
    }}};

}  // namespace
}  // namespace lowrank::cli
