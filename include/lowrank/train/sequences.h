#pragma once
// Reading token sequences for evaluation and generation: JSONL lines with "input_ids".
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowrank::train {

// Parses the "input_ids" array of a JSONL record; every id must be an integer in [0, vocab).
std::vector<int32_t> parse_input_ids(const nlohmann::json& record, int64_t vocab_size);

// Turns a {"text": ...} line into ids (the tokenizer with its special tokens); null: ids only.
using TextToIds = std::function<std::vector<int32_t>(const std::string&)>;

// Reads every line of a JSONL file as one sequence (DESIGN.md: no packing across lines): lines
// hold "input_ids", or "text" when `text_to_ids` is given.
std::vector<std::vector<int32_t>> read_token_sequences(const std::string& path, int64_t vocab_size,
                                                       const TextToIds& text_to_ids = {});

}  // namespace lowrank::train
