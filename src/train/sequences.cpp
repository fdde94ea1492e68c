#include "lowrank/train/sequences.h"

#include "lowrank/core/error.h"
#include "lowrank/io/jsonl.h"

namespace lowrank::train {

std::vector<int32_t> parse_input_ids(const nlohmann::json& record, int64_t vocab_size) {
  auto it = record.find("input_ids");
  if (it == record.end()) {
    if (record.contains("text") || record.contains("prompt") || record.contains("messages"))
      throw error("text records need a tokenizer (tokenizer.json in the model folder)");
    throw error("expected an \"input_ids\" array");
  }
  if (!it->is_array()) throw error("\"input_ids\" must be an array of integers");
  std::vector<int32_t> ids;
  ids.reserve(it->size());
  for (const auto& v : *it) {
    if (!v.is_number_integer()) throw error("\"input_ids\" must hold integers, found ", v.dump());
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      throw error("token id ", id, " is outside the model's vocabulary [0, ", vocab_size, ")");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

std::vector<std::vector<int32_t>> read_token_sequences(const std::string& path, int64_t vocab_size) {
  std::vector<std::vector<int32_t>> out;
  io::for_each_jsonl(path, [&](int64_t, const nlohmann::json& rec) { out.push_back(parse_input_ids(rec, vocab_size)); });
  if (out.empty()) throw error(path, ": no sequences (the file is empty)");
  return out;
}

}  // namespace lowrank::train
