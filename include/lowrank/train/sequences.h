#pragma once
// Reading token sequences for evaluation and generation: JSONL lines with "input_ids".
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowrank::train {

// Parses the "input_ids" array of a JSONL record; every id must be an integer in [0, vocab).
std::vector<int32_t> parse_input_ids(const nlohmann::json& record, int64_t vocab_size);

// Reads every line of a JSONL file of "input_ids" as one sequence (no packing across lines).
// Text, prompt/completion and chat lines are read by Dataset (train, eval) with the tokenizer.
std::vector<std::vector<int32_t>> read_token_sequences(const std::string& path, int64_t vocab_size);

}  // namespace lowrank::train
