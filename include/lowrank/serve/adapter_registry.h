#pragma once
// The adapters a server can route requests to, by name (OpenAI's `model` field). Loading and
// unloading are safe while requests run: a running sequence holds its adapter until it ends.
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_hook.h"

namespace lowrank::serve {

struct ServedAdapter {
  ServedAdapter(std::string name, std::string dir, double scale, lora::Adapter adapter,
                std::optional<std::string> chat_template);
  const std::string name, dir;
  const double scale;  // the user's scale (NAME=DIR:SCALE), on top of alpha / r
  lora::Adapter adapter;
  lora::LoraHook hook;  // applies `adapter` alone, times `scale`
  const std::optional<std::string> chat_template;  // for chat requests naming this adapter
};

// What --adapter-dir did (for /metrics).
struct AdapterFolderStats {
  uint64_t loads = 0;      // adapters loaded from the folder on first use
  uint64_t evictions = 0;  // unloaded to stay within --max-loaded-adapters
};

class AdapterRegistry {
 public:
  // `chat_template_flag`: --chat-template (a built-in name or a file; "" for none), which wins
  // over an adapter's own chat_template.jinja.
  // `mixable_on_host`: adapters that mix (lora::is_mixable) stay in host memory after loading —
  // the paged decode step copies them to the device on demand (its adapter cache), so their number
  // is bounded by host memory; their `hook` then holds host tensors and serves CPU steps only.
  // `adapter_dir` ("": none): requests may name any adapter folder in it, loaded on first use
  // (find_or_load).
  // `max_from_dir` (0: no limit): adapters loaded from adapter_dir kept at once; loading one more
  // unloads the least recently used of them (a running sequence keeps its adapter until it ends).
  AdapterRegistry(const model::Model& model, std::string chat_template_flag, bool mixable_on_host = false,
                  std::string adapter_dir = "", size_t max_from_dir = 0);

  // Loads a PEFT adapter folder, "DIR" or "DIR:SCALE", as `name`. Throws Error when the name is
  // taken, the folder is not an adapter for this model, or the adapter has trained biases (they
  // would replace the base model's biases for every request).
  void load(const std::string& name, const std::string& spec);
  // False when no adapter has that name.
  bool unload(const std::string& name);
  std::shared_ptr<ServedAdapter> find(const std::string& name) const;
  // find(), else with an adapter folder the adapter `adapter_dir/name` loaded now, under its name
  // (vLLM's LoRA resolver over a folder). Null when there is no such adapter (or `name` is not a
  // plain folder name); Error when the folder is there but is no adapter for this model.
  std::shared_ptr<ServedAdapter> find_or_load(const std::string& name);
  std::vector<std::shared_ptr<ServedAdapter>> list() const;  // by name
  // With an adapter folder, its counters; nullopt without one.
  std::optional<AdapterFolderStats> folder_stats() const;

 private:
  const model::Model& model_;
  const std::string chat_template_flag_;
  const bool mixable_on_host_;
  const std::string adapter_dir_;
  const size_t max_from_dir_;
  std::mutex load_mutex_;  // one load from adapter_dir_ at a time (two requests, one load)
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<ServedAdapter>> adapters_;  // guarded by mutex_
  // With max_from_dir_: the names loaded from adapter_dir_, most recently used first, and where
  // each is in that list; guarded by mutex_.
  std::list<std::string> from_dir_;
  std::map<std::string, std::list<std::string>::iterator> from_dir_at_;
  AdapterFolderStats folder_stats_;  // guarded by mutex_
};

}  // namespace lowrank::serve
