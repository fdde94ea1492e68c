#pragma once
// A whole file mapped read-only into memory, for the readers of large binary formats
// (safetensors, GGUF) that validate it and then hand out zero-copy views.
#include <cstdint>
#include <memory>
#include <string>

namespace lowrank::io {

struct MappedFile {
  std::shared_ptr<void> owner;  // unmaps when the last view is gone
  const char* data = nullptr;   // null for an empty file
  uint64_t size = 0;
};

// Maps `path`; throws Error("<path>: ...") if it cannot be opened, is not a regular file (a folder
// is named so: "is a folder, not <what>") or cannot be mapped.
MappedFile map_file(const std::string& path, const char* what);

}  // namespace lowrank::io
