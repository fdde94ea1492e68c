#include "lowrank/io/jsonl.h"

#include <fstream>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::io {

namespace {

// fn on one record, its errors prefixed with `where` ("<path>:<line>" or "<path>: record <n>").
void visit(const std::string& where, int64_t number, const nlohmann::json& value,
           const std::function<void(int64_t, const nlohmann::json&)>& fn) {
  if (!value.is_object()) throw error(where, ": expected a JSON object, got ", value.type_name());
  try {
    fn(number, value);
  } catch (const Error& e) {
    throw error(where, ": ", e.what());
  } catch (const nlohmann::json::exception& e) {  // a value of another type than the reader needs
    throw error(where, ": ", json_error_text(e));
  }
}

// A .json file whose first character (after white space) opens an array: Hugging Face datasets'
// "json" loader takes such a file of records as well as JSON Lines.
bool is_json_array_file(const std::string& path, std::ifstream& in) {
  if (!path.ends_with(".json")) return false;
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {}
  const bool array = in && c == '[';
  in.clear();
  in.seekg(0);
  return array;
}

}  // namespace

void for_each_jsonl(const std::string& path, const std::function<void(int64_t, const nlohmann::json&)>& fn) {
  if (is_directory(path)) throw error(path, ": is a folder, expected a JSONL file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path, ": cannot read");
  if (is_json_array_file(path, in)) {
    const nlohmann::json records = parse_json(read_file(path), path);
    for (size_t i = 0; i < records.size(); ++i)
      visit(detail::concat(path, ": record ", i + 1), static_cast<int64_t>(i + 1), records[i], fn);
    return;
  }
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    visit(detail::concat(path, ":", number), number, parse_json(line, detail::concat(path, ":", number)), fn);
  }
}

}  // namespace lowrank::io
