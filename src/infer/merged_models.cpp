#include "merged_models.h"

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/lora/merge.h"
#include "decode_graphs.h"

namespace lowrank::infer {

MergedModels::MergedModels(size_t capacity, PagedKVCache& cache, bool graphs)
    : capacity_(capacity), cache_(cache), graphs_(graphs) {
  LR_CHECK(capacity >= 1, "merged models: room for at least one copy");
}

MergedModels::~MergedModels() {
  for (auto it = copies_.begin(); it != copies_.end();) it = drop(it);
}

std::list<MergedModels::Entry>::iterator MergedModels::drop(std::list<Entry>::iterator it) {
  if (it->copy) device_synchronize(it->copy->model.device());  // a replay may still read its weights
  return copies_.erase(it);
}

MergedModels::Entry* MergedModels::kept(const std::shared_ptr<const lora::Adapter>& adapter, double scale) {
  for (auto it = copies_.begin(); it != copies_.end(); ++it) {
    if (it->key != adapter.get() || it->scale != scale || it->source.expired()) continue;
    copies_.splice(copies_.begin(), copies_, it);
    return &copies_.front();
  }
  return nullptr;
}

MergedModels::Copy* MergedModels::find(const std::shared_ptr<const lora::Adapter>& adapter, double scale) {
  Entry* e = kept(adapter, scale);
  return e ? e->copy.get() : nullptr;
}

MergedModels::Copy* MergedModels::get(const model::Model& base, const std::shared_ptr<const lora::Adapter>& adapter,
                                      double scale, lora::AdapterCache& adapters) {
  if (Entry* e = kept(adapter, scale)) return e->copy.get();  // null: asked before, cannot be merged
  trim();
  while (copies_.size() >= capacity_) drop(std::prev(copies_.end()));
  std::unique_ptr<Copy> copy;
  if (std::optional<model::Model> m = lora::merged_copy(base, *adapters.acquire(adapter), scale)) {
    copy = std::make_unique<Copy>(Copy{std::move(*m), nullptr});
    if (graphs_ && DecodeGraphs::usable(copy->model)) copy->graphs = std::make_unique<DecodeGraphs>(copy->model, cache_);
    ++made_;
  }
  copies_.push_front({adapter, adapter.get(), scale, std::move(copy)});
  return copies_.front().copy.get();
}

int64_t MergedModels::graph_replays() const {
  int64_t n = 0;
  for (const Entry& e : copies_)
    if (e.copy && e.copy->graphs) n += e.copy->graphs->replays();
  return n;
}

void MergedModels::trim() {
  for (auto it = copies_.begin(); it != copies_.end();) it = it->source.expired() ? drop(it) : std::next(it);
}

}  // namespace lowrank::infer
