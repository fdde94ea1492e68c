#include "lowrank/lora/adapter_cache.h"

#include "lowrank/core/error.h"

namespace lowrank::lora {

AdapterCache::AdapterCache(size_t capacity, int num_layers, Device device, DType dtype)
    : capacity_(capacity), num_layers_(num_layers), device_(device), dtype_(dtype) {
  LR_CHECK(capacity >= 1, "the adapter cache needs room for at least one adapter");
}

std::shared_ptr<const MixableAdapter> AdapterCache::acquire(const std::shared_ptr<const Adapter>& adapter) {
  LR_CHECK(adapter, "adapter cache: no adapter");
  std::lock_guard lock(mutex_);
  for (auto it = lru_.begin(); it != lru_.end(); ++it) {
    if (it->key != adapter.get() || it->source.expired()) continue;
    lru_.splice(lru_.begin(), lru_, it);  // most recently used
    ++hits_;
    return it->copy;
  }
  evict_to(capacity_ - 1);  // room for the new one, unless every resident adapter is in use
  auto copy = std::make_shared<const MixableAdapter>(*adapter, num_layers_, device_, dtype_, &staging_);
  lru_.push_front({adapter, adapter.get(), copy});
  ++loads_;
  return copy;
}

void AdapterCache::evict_to(size_t keep) {
  for (auto it = lru_.begin(); it != lru_.end();)  // adapters unloaded from the server go first
    it = it->source.expired() && it->copy.use_count() == 1 ? (++evictions_, lru_.erase(it)) : std::next(it);
  for (auto it = lru_.end(); lru_.size() > keep && it != lru_.begin();) {
    --it;
    if (it->copy.use_count() > 1) continue;  // a batch holds it
    it = lru_.erase(it);
    ++evictions_;
  }
}

void AdapterCache::trim() {
  std::lock_guard lock(mutex_);
  evict_to(capacity_);
}

AdapterCacheStats AdapterCache::stats() const {
  std::lock_guard lock(mutex_);
  AdapterCacheStats s{hits_, loads_, evictions_, lru_.size(), 0};
  for (const Entry& e : lru_) s.bytes += e.copy->bytes();
  return s;
}

}  // namespace lowrank::lora
