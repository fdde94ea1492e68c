#pragma once
// File helpers: whole-file reads with clear errors, atomic writes, JSON files.
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace lowrank::io {

// Reads a whole file; throws Error("<path>: cannot read: <reason>") if it cannot.
std::string read_file(const std::string& path);
// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename, fsync folder.
// The temp file is removed on failure. To stream large outputs, use AtomicFile (atomic_file.h).
void write_file_atomic(const std::string& path, const std::string& bytes);
// nlohmann's exception message without its "[json.exception.parse_error.101] " prefix.
std::string json_error_text(const std::exception& e);
// Parses JSON text; every nlohmann failure (syntax, a number that overflows such as 1E400, bad
// UTF-8 ...) becomes Error("<where>: invalid JSON[ at byte N]: <reason>"). `where` names the
// file (and line, for JSONL). Every JSON read of lowrank goes through here.
nlohmann::json parse_json(std::string_view text, const std::string& where);
// Parses a JSON file (parse_json of its text).
nlohmann::json read_json(const std::string& path);
// Writes `j` (pretty-printed with `indent`; compact if negative) plus a newline, atomically.
void write_json_atomic(const std::string& path, const nlohmann::json& j, int indent = 2);
// True if `path` is a regular file (symlinks followed); false for folders and missing paths.
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);  // symlinks followed
// Flushes a directory entry to disk (after a rename into it).
void fsync_directory(const std::string& dir);

}  // namespace lowrank::io
