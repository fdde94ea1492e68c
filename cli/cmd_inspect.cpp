// lowrank inspect PATH: what a safetensors or GGUF file, a model folder or an adapter folder contains.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "command.h"
#include "lowrank/io/files.h"
#include "lowrank/io/gguf.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/config.h"
#include "lowrank/model/config.h"

namespace lowrank::cli {
namespace {

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

int64_t print_tensors(const io::TensorStore& store, bool list) {
  int64_t total = 0;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& name : store.names()) {
    const auto& info = store.info(name);
    const int64_t n = shape_numel(info.shape);
    total += n;
    by_dtype[std::string(dtype_name(info.dtype))] += n;
    if (list) std::printf("  %-64s %-5s %s\n", name.c_str(), std::string(dtype_name(info.dtype)).c_str(),
                          shape_str(info.shape).c_str());
  }
  std::printf("tensors: %zu, parameters: %lld (%s)", store.names().size(), static_cast<long long>(total),
              human_count(total).c_str());
  for (const auto& [d, n] : by_dtype) std::printf(", %s %s", d.c_str(), human_count(n).c_str());
  std::printf("\n");
  return total;
}

void inspect_adapter(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  const auto cfg = io::read_json(cfg_path);
  lora::LoraConfig::from_json(cfg, cfg_path);  // validates: a malformed config is an error here too
  std::printf("adapter folder: %s\n", dir.c_str());
  for (const char* key : {"peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "bias", "fan_in_fan_out",
                          "use_dora", "init_lora_weights", "target_modules", "exclude_modules", "layers_to_transform",
                          "layers_pattern", "modules_to_save", "rank_pattern", "alpha_pattern", "base_model_name_or_path"})
    if (cfg.contains(key) && (!cfg[key].is_null() || std::strcmp(key, "target_modules") == 0))  // unset options: not shown
      std::printf("  %-24s %s\n", key, cfg[key].dump().c_str());
  const std::string weights = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!io::file_exists(weights)) throw error(dir, ": no adapter_model.safetensors");
  std::printf("trainable ");
  print_tensors(io::TensorStore::open(weights), false);
}

void inspect_model(const std::string& dir, bool list) {
  auto c = model::ModelConfig::load(dir);
  std::printf("model folder: %s\n", dir.c_str());
  std::printf("  architecture %s, layers %lld, hidden %lld, heads %lld (kv %lld, head_dim %lld), intermediate %lld, "
              "vocab %lld, context %lld, tied embeddings %s\n",
              model::arch_name(c.arch).c_str(), (long long)c.num_layers, (long long)c.hidden_size,
              (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
              (long long)c.intermediate_size, (long long)c.vocab_size, (long long)c.max_position_embeddings,
              c.tie_word_embeddings ? "yes" : "no");
  if (!c.learned_positions) {
    std::printf("  rope %s theta %g factor %g", c.rope.type.c_str(), c.rope.theta, c.rope.factor);
    if (c.rotary_dim() != c.head_dim) std::printf(", rotary dims %lld of %lld", (long long)c.rotary_dim(), (long long)c.head_dim);
    if (c.sliding_rope) std::printf(" (sliding-window layers: %s theta %g)", c.sliding_rope->type.c_str(), c.sliding_rope->theta);
    std::printf("\n");
  }
  print_tensors(io::TensorStore::open(dir), list);
}

bool has_gguf_magic(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char magic[4] = {};
  const bool gguf = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
  std::fclose(f);
  return gguf;
}

void inspect_gguf(const std::string& path, bool list) {
  const io::GgufFile f = io::GgufFile::open(path);
  std::printf("GGUF file: %s (version %u)\n", path.c_str(), f.version());
  for (const auto& [key, value] : f.metadata()) std::printf("  %-44s %s\n", key.c_str(), value.str().c_str());
  int64_t total = 0;
  std::map<std::string, int64_t> by_type;
  for (const auto& t : f.tensors()) {
    const int64_t n = shape_numel(t.shape());
    total += n;
    by_type[io::ggml_type_name(t.type)] += n;
    if (list) std::printf("  %-48s %-6s %s\n", t.name.c_str(), io::ggml_type_name(t.type).c_str(), shape_str(t.shape()).c_str());
  }
  std::printf("tensors: %zu, parameters: %lld (%s)", f.tensors().size(), static_cast<long long>(total),
              human_count(total).c_str());
  for (const auto& [type, n] : by_type) std::printf(", %s %s", type.c_str(), human_count(n).c_str());
  std::printf("\n");
}

int run_inspect(const std::string& path, bool list) {
  namespace fs = std::filesystem;
  if (io::is_directory(path)) {
    if (io::file_exists((fs::path(path) / "adapter_config.json").string())) inspect_adapter(path);
    else if (io::file_exists((fs::path(path) / "config.json").string())) inspect_model(path, list);
    else throw error(path, ": neither a model folder (config.json) nor an adapter folder (adapter_config.json)");
    return 0;
  }
  if (!io::file_exists(path)) throw error(path, ": no such file or folder");
  if (has_gguf_magic(path)) {
    inspect_gguf(path, list);
    return 0;
  }
  auto store = io::TensorStore::open(path);
  std::printf("safetensors file: %s\n", path.c_str());
  for (const auto& [k, v] : store.metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  print_tensors(store, true);
  return 0;
}

RegisterCommand reg{{"inspect", "Show the tensors of a safetensors or GGUF file, a model folder or an adapter folder",
                     [](CLI::App& app) {
                       auto path = std::make_shared<std::string>();
                       auto list = std::make_shared<bool>(false);
                       app.add_option("path", *path, "safetensors or GGUF file, model folder or adapter folder")->required();
                       app.add_flag("--tensors", *list, "List every tensor of a model folder or a GGUF file");
                       return [path, list] { return run_inspect(*path, *list); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
