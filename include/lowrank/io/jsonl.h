#pragma once
// JSON Lines input: one JSON value per line. Errors name the file and the 1-based line.
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace lowrank::io {

// Calls fn(line_number, value) for every non-blank line. A line that is not valid JSON, or not a
// JSON object, is an Error "<path>:<line>: ...". fn may throw Error; its message gets the same
// "<path>:<line>: " prefix. A ".json" file holding one JSON array of objects (what Hugging Face
// datasets' "json" loader also takes) is read whole: fn(n, record) for its n-th element, errors
// prefixed "<path>: record <n>: ".
void for_each_jsonl(const std::string& path, const std::function<void(int64_t, const nlohmann::json&)>& fn);

}  // namespace lowrank::io
