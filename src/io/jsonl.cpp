#include "lowrank/io/jsonl.h"

#include <fstream>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::io {

void for_each_jsonl(const std::string& path, const std::function<void(int64_t, const nlohmann::json&)>& fn) {
  if (is_directory(path)) throw error(path, ": is a folder, expected a JSONL file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error(path, ": cannot read");
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const nlohmann::json value = parse_json(line, detail::concat(path, ":", number));
    if (!value.is_object()) throw error(path, ":", number, ": expected a JSON object, got ", value.type_name());
    try {
      fn(number, value);
    } catch (const Error& e) {
      throw error(path, ":", number, ": ", e.what());
    } catch (const nlohmann::json::exception& e) {  // a value of another type than the reader needs
      throw error(path, ":", number, ": ", json_error_text(e));
    }
  }
}

}  // namespace lowrank::io
