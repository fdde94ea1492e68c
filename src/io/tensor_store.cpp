// TensorStore: one name -> tensor view over a model's safetensors, whether in one file or in
// shards listed by model.safetensors.index.json.
#include <filesystem>
#include <sstream>

#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"

namespace lowrank::io {
namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// A shard path from the index must name a file inside the model folder: a crafted index must
// not make us read /etc/passwd or ../other_model.
void check_shard_path(const std::string& index_path, const std::string& tensor,
                      const std::string& shard) {
  const auto fail = [&](const char* why) {
    throw error(index_path, ": weight_map entry '", tensor, "' -> '", shard, "': ", why);
  };
  if (shard.empty()) fail("empty shard file name");
  if (shard.front() == '/') fail("absolute paths are not allowed; shards must be in the folder");
  std::stringstream parts(shard);
  for (std::string part; std::getline(parts, part, '/');)
    if (part == "..") fail("'..' is not allowed; shards must be in the folder");
  if (shard.find('\0') != std::string::npos) fail("NUL byte in file name");
}

}  // namespace

TensorStore TensorStore::open(const std::string& path) {
  TensorStore store;
  store.source_ = path;

  // Registers every tensor of `file`; a name already provided by another shard is an Error.
  const auto add_file = [&](std::shared_ptr<SafetensorsFile> file) {
    const size_t index = store.files_.size();
    for (const auto& t : file->tensors()) {
      const auto [it, inserted] = store.where_.emplace(t.name, index);
      if (!inserted)
        throw error(path, ": tensor '", t.name, "' is in two shards: ",
                    store.files_[it->second]->path(), " and ", file->path());
    }
    store.files_.push_back(std::move(file));
  };

  if (!is_directory(path)) {
    if (!file_exists(path)) throw error(path, ": no such file or folder");
    add_file(std::make_shared<SafetensorsFile>(SafetensorsFile::open(path)));
    return store;
  }

  std::string dir = path;  // without trailing slashes, so joined paths read cleanly
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string index_path = dir + "/" + kIndexName;
  if (file_exists(index_path)) {
    const nlohmann::json index = read_json(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw error(index_path, ": expected an object with a \"weight_map\" object");
    const auto& weight_map = index["weight_map"];
    // Open each shard once, in first-mention order, after checking every path.
    std::map<std::string, size_t> shard_index;
    std::vector<std::string> shard_order;
    for (const auto& [tensor, shard] : weight_map.items()) {
      if (!shard.is_string())
        throw error(index_path, ": weight_map entry '", tensor, "' must be a file name (got ",
                    shard.type_name(), ")");
      const auto& file = shard.get_ref<const std::string&>();
      check_shard_path(index_path, tensor, file);
      if (shard_index.emplace(file, shard_order.size()).second) shard_order.push_back(file);
    }
    for (const auto& file : shard_order) {
      const std::string shard_path = dir + "/" + file;
      if (!file_exists(shard_path))
        throw error(index_path, ": shard '", file, "' does not exist (", shard_path, ")");
      add_file(std::make_shared<SafetensorsFile>(SafetensorsFile::open(shard_path)));
    }
    for (const auto& [tensor, shard] : weight_map.items()) {
      const auto& file = shard.get_ref<const std::string&>();
      const auto& opened = store.files_[shard_index.at(file)];
      if (!opened->contains(tensor))
        throw error(index_path, ": tensor '", tensor, "' is listed in shard '", file,
                    "' but that file does not contain it");
    }
    return store;
  }

  const std::string single_path = dir + "/" + kSingleName;
  if (file_exists(single_path)) {
    add_file(std::make_shared<SafetensorsFile>(SafetensorsFile::open(single_path)));
    return store;
  }
  // PyTorch's pickle checkpoints (what save_pretrained wrote before safetensors): not read, since
  // unpickling runs whatever the file says.
  const bool pickled = file_exists(dir + "/pytorch_model.bin") || file_exists(dir + "/pytorch_model.bin.index.json");
  throw error(dir, ": no model weights found (looked for ", kIndexName, " and ", kSingleName, ")",
              pickled ? "; its pytorch_model.bin is PyTorch's pickle format, which lowrank does not read: re-save "
                        "the model with transformers' save_pretrained(dir, safe_serialization=True)"
                      : "");
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, index] : where_) out.push_back(name);
  return out;
}

bool TensorStore::contains(const std::string& name) const { return where_.count(name) != 0; }

const TensorInfo& TensorStore::info(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(source_, ": no tensor named '", name, "'");
  return *files_[it->second]->find(name);
}

Tensor TensorStore::get(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(source_, ": no tensor named '", name, "'");
  return files_[it->second]->get(name);
}

const std::string& TensorStore::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw error(source_, ": no tensor named '", name, "'");
  return files_[it->second]->path();
}

std::map<std::string, std::string> TensorStore::metadata() const {
  // The first shard that sets a key wins (shards of one checkpoint normally agree).
  std::map<std::string, std::string> merged;
  for (const auto& file : files_) merged.insert(file->metadata().begin(), file->metadata().end());
  return merged;
}

}  // namespace lowrank::io
