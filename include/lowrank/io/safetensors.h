#pragma once
// safetensors: a validated, memory-mapped reader and an atomic writer.
// Format: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data buffer. The reader checks everything before trusting it (sizes, offsets
// contiguous from 0 with no gaps, overlaps or trailing bytes, dtypes, duplicate names) and throws
// lowrank::Error naming the file and the tensor on any violation.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`; throws Error("<path>: ...") on anything malformed.
  static SafetensorsFile open(const std::string& path);
  // Validates an in-memory copy of a whole file (used by the fuzzer and tests).
  static SafetensorsFile from_bytes(std::string bytes, const std::string& name = "<memory>");

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // Zero-copy CPU view of the tensor's bytes (keeps the mapping alive); throws Error if absent
  // or if its rank is above 4 (such tensors are still listed). The bytes are read-only (an
  // mmap with PROT_READ): clone() before modifying. Data is aligned only as well as the file
  // aligns it (the writer pads the header to 8 bytes, as the Python library does).
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  // Validates `size` bytes at `bytes` (kept alive by `owner`); `path` prefixes every Error.
  static SafetensorsFile parse(std::string path, std::shared_ptr<void> owner, const char* bytes,
                               uint64_t size);

  std::string path_;
  std::shared_ptr<void> mapping_;  // owns the mmap (or the in-memory bytes)
  const char* data_ = nullptr;     // start of the data buffer
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a model folder: model.safetensors, or the shards listed by
// model.safetensors.index.json ("weight_map": name -> shard file). Every shard is validated; a
// name listed in the index but missing from its shard, a shard path leaving the folder, or a
// name present in two shards is an Error. Also opens a single .safetensors file path directly.
class TensorStore {
 public:
  static TensorStore open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws Error if absent
  Tensor get(const std::string& name) const;               // zero-copy view
  const std::string& file_of(const std::string& name) const;
  std::map<std::string, std::string> metadata() const;      // merged __metadata__
  const std::string& source() const { return source_; }    // the path given to open()

 private:
  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Writes tensors (CPU, any dtype, contiguous) in the given order with the given metadata.
// Atomic: a temporary file in the same folder, fsync, rename over `path`, fsync of the folder.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace lowrank::io
