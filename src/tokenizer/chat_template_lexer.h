#pragma once
// Tokenizer for chat templates: splits the source into text and tag tokens, applying Jinja's
// whitespace control exactly as transformers configures it (trim_blocks=True,
// lstrip_blocks=True, keep_trailing_newline=False; `-` and `+` modifiers).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lowrank::tok::jinja {

enum class TokType { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Op, Eof };

struct Token {
  TokType type;
  std::string text;  // Text: the data; Name/Op: the spelling; String: the decoded value
  int64_t ival = 0;
  double fval = 0;
  int line = 1;
  int col = 1;
};

// Throws Error("chat template line L, column C: ...") on malformed input.
std::vector<Token> lex(std::string_view source);

// "line L, column C" for error messages.
std::string where(int line, int col);

}  // namespace lowrank::tok::jinja
