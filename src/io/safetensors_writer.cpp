// The safetensors writer: header JSON padded to 8 bytes, then the tensors' bytes in the given
// order, streamed into an AtomicFile so that multi-GB models never sit in one buffer.
#include <bit>
#include <nlohmann/json.hpp>
#include <set>

#include "lowrank/io/atomic_file.h"
#include "lowrank/io/safetensors.h"

namespace lowrank::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; tensor bytes are written as they are in memory");

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in the caller's order, which makes files easy to read.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw error(path, ": invalid tensor name '", name, "'");
    if (!seen.insert(name).second) throw error(path, ": duplicate tensor name '", name, "'");
    if (!t.defined()) throw error(path, ": tensor '", name, "' is undefined");
    if (!t.device().is_cpu())
      throw error(path, ": tensor '", name, "' is on ", t.device().str(),
                  "; write_safetensors needs CPU tensors");
    const uint64_t end = offset + t.nbytes();
    header[name] = {{"dtype", std::string(dtype_name(t.dtype()))},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, end}}};
    offset = end;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // a name or value that is not valid UTF-8
    throw error(path, ": cannot write header: ", e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data starts 8-byte aligned, as the Python
  // library does; readers then get aligned tensors straight from the mmap.
  text.append((8 - text.size() % 8) % 8, ' ');

  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>(uint64_t{text.size()} >> (8 * i));

  AtomicFile file(path);
  file.write(length, sizeof length);
  file.write(text);
  for (const auto& [name, t] : tensors)
    if (t.nbytes() > 0) file.write(t.raw(), t.nbytes());
  file.commit();
}

}  // namespace lowrank::io
