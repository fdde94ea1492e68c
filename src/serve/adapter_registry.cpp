#include "lowrank/serve/adapter_registry.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/mixable_adapter.h"
#include "lowrank/tokenizer/chat_template.h"

namespace lowrank::serve {

ServedAdapter::ServedAdapter(std::string name_, std::string dir_, double scale_, lora::Adapter adapter_,
                             std::optional<std::string> chat_template_)
    : name(std::move(name_)), dir(std::move(dir_)), scale(scale_), adapter(std::move(adapter_)),
      hook({lora::ActiveAdapter{&adapter, scale}}), chat_template(std::move(chat_template_)) {}

AdapterRegistry::AdapterRegistry(const model::Model& model, std::string chat_template_flag, bool mixable_on_host,
                                 std::string adapter_dir, size_t max_from_dir)
    : model_(model), chat_template_flag_(std::move(chat_template_flag)), mixable_on_host_(mixable_on_host),
      adapter_dir_(std::move(adapter_dir)), max_from_dir_(max_from_dir) {}

namespace {

// A name that is one folder inside the adapter folder: letters, digits, '.', '_', '-', not all dots.
bool plain_folder_name(const std::string& name) {
  if (name.empty() || name.size() > 255 || name.find_first_not_of('.') == std::string::npos) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isalnum(c) || c == '.' || c == '_' || c == '-'; });
}

}  // namespace

std::shared_ptr<ServedAdapter> AdapterRegistry::find_or_load(const std::string& name) {
  auto used = [&] {  // a hit: the adapter moves to the front of the folder's LRU order
    std::lock_guard lock(mutex_);
    auto it = adapters_.find(name);
    if (it == adapters_.end()) return std::shared_ptr<ServedAdapter>();
    if (auto at = from_dir_at_.find(name); at != from_dir_at_.end()) from_dir_.splice(from_dir_.begin(), from_dir_, at->second);
    return it->second;
  };
  if (auto a = used()) return a;
  if (adapter_dir_.empty() || !plain_folder_name(name)) return nullptr;
  const std::string dir = (std::filesystem::path(adapter_dir_) / name).string();
  if (!io::file_exists(dir + "/adapter_config.json")) return nullptr;
  std::lock_guard lock(load_mutex_);
  if (auto a = used()) return a;  // another request loaded it while this one waited
  load(name, dir);
  std::lock_guard guard(mutex_);
  ++folder_stats_.loads;
  if (max_from_dir_ > 0) {
    from_dir_.push_front(name);
    from_dir_at_[name] = from_dir_.begin();
    while (from_dir_.size() > max_from_dir_) {
      adapters_.erase(from_dir_.back());  // its running sequences hold it until they end
      from_dir_at_.erase(from_dir_.back());
      from_dir_.pop_back();
      ++folder_stats_.evictions;
    }
  }
  return adapters_.at(name);
}

std::optional<AdapterFolderStats> AdapterRegistry::folder_stats() const {
  if (adapter_dir_.empty()) return std::nullopt;
  std::lock_guard lock(mutex_);
  return folder_stats_;
}

void AdapterRegistry::load(const std::string& name, const std::string& spec_text) {
  if (name.empty()) throw error("an adapter needs a name");
  if (find(name)) throw error("an adapter named '", name, "' is already loaded");
  const lora::AdapterSpec spec = lora::parse_adapter_spec(spec_text);
  lora::Adapter adapter = lora::Adapter::load(spec.dir, model_);
  if (!adapter.biases.empty())
    throw error(spec.dir, ": the adapter has trained biases, which would change the base model for every request; serve a merged model instead "
                "(lowrank merge)");
  if (!adapter.saved_modules.empty())
    throw error(spec.dir, ": the adapter replaces ", adapter.saved_modules.front().module,
                " (modules_to_save), which would change the base model for every request; serve a merged model instead "
                "(lowrank merge)");
  if (mixable_on_host_ && lora::is_mixable(adapter, static_cast<int>(model_.config().num_layers)))
    adapter.to(Device::cpu());  // host memory; the decode step's adapter cache pages it in
  auto served = std::make_shared<ServedAdapter>(
      name, spec.dir, spec.scale, std::move(adapter),
      tok::resolve_chat_template(chat_template_flag_, {spec.dir}, model_.source()));
  std::lock_guard lock(mutex_);
  if (!adapters_.emplace(name, std::move(served)).second)  // loaded meanwhile by another request
    throw error("an adapter named '", name, "' is already loaded");
}

bool AdapterRegistry::unload(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (auto at = from_dir_at_.find(name); at != from_dir_at_.end()) {
    from_dir_.erase(at->second);
    from_dir_at_.erase(at);
  }
  return adapters_.erase(name) > 0;
}

std::shared_ptr<ServedAdapter> AdapterRegistry::find(const std::string& name) const {
  std::lock_guard lock(mutex_);
  auto it = adapters_.find(name);
  return it == adapters_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<ServedAdapter>> AdapterRegistry::list() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<ServedAdapter>> out;
  for (const auto& [name, a] : adapters_) out.push_back(a);
  return out;
}

}  // namespace lowrank::serve
