#include "lowrank/model/export.h"

#include <cstdio>
#include <filesystem>

#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"

namespace lowrank::model {
namespace fs = std::filesystem;

void write_model_folder(const Model& model, const std::string& source_dir, const std::string& out_dir,
                        const ExportOptions& options) {
  fs::create_directories(out_dir);
  auto tensors = checkpoint_tensors(model.config(), model.weights());
  for (auto& [name, t] : tensors) t = t.to(Device::cpu()).to(options.dtype);
  // Shards of at most max_shard_bytes (a single tensor larger than that gets its own shard).
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  int64_t bytes = 0;
  for (auto& nt : tensors) {
    const int64_t n = static_cast<int64_t>(nt.second.nbytes());
    if (!shards.back().empty() && bytes + n > options.max_shard_bytes) {
      shards.emplace_back();
      bytes = 0;
    }
    shards.back().push_back(nt);
    bytes += n;
  }
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  std::error_code ec;
  if (shards.size() == 1) {
    io::write_safetensors((fs::path(out_dir) / "model.safetensors").string(), shards[0], meta);
    fs::remove(fs::path(out_dir) / "model.safetensors.index.json", ec);
  } else {
    nlohmann::json index;
    int64_t total = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      io::write_safetensors((fs::path(out_dir) / name).string(), shards[i], meta);
      for (const auto& [n, t] : shards[i]) {
        index["weight_map"][n] = name;
        total += static_cast<int64_t>(t.nbytes());
      }
    }
    index["metadata"] = {{"total_size", total}};
    io::write_json_atomic((fs::path(out_dir) / "model.safetensors.index.json").string(), index);
    fs::remove(fs::path(out_dir) / "model.safetensors", ec);
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                        "vocab.json", "merges.txt", "chat_template.jinja"}) {
    const fs::path src = fs::path(source_dir) / f;
    if (fs::exists(src) && fs::absolute(src) != fs::absolute(fs::path(out_dir) / f))
      io::write_file_atomic((fs::path(out_dir) / f).string(), io::read_file(src.string()));
  }
  auto config = io::read_json((fs::path(source_dir) / "config.json").string());
  const char* dtype_names[] = {"float32", "float16", "bfloat16"};
  const int di = options.dtype == DType::F32 ? 0 : options.dtype == DType::F16 ? 1 : 2;
  if (config.contains("torch_dtype")) config["torch_dtype"] = dtype_names[di];
  config["dtype"] = dtype_names[di];
  // An adapter's modules_to_save copy of one of a tied pair unties them (Model::untie_lm_head).
  if (model.weights().lm_head_name != model.weights().embed_name) config["tie_word_embeddings"] = false;
  io::write_json_atomic((fs::path(out_dir) / "config.json").string(), config);
}

}  // namespace lowrank::model
