#pragma once
// The adapters on the compute device: served adapters live in host memory, and a batch's adapters
// are copied to the device on first use (MixableAdapter) and kept, least recently used evicted
// once more than `capacity` are held. An adapter that a running batch holds (its MixedBatchHook
// keeps the shared_ptr) is never evicted: when one step needs more adapters than the capacity, the
// cache holds them all for that step, and trim() (after the step) evicts down to the capacity.
// The policy does not depend on the device (on the CPU the "device" copy is a host copy), so the
// CPU tests check it. Thread-safe; counters for /metrics.
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>

#include "lowrank/lora/mixable_adapter.h"

namespace lowrank::lora {

struct AdapterCacheStats {
  uint64_t hits = 0;       // acquire() found the adapter on the device (once per batch using it)
  uint64_t loads = 0;      // acquire() copied it there
  uint64_t evictions = 0;  // copies dropped to stay within the capacity
  uint64_t resident = 0;   // adapters on the device now
  uint64_t bytes = 0;      // their bytes
  // Filled by infer::BatchDecoder when it keeps merged copies of the model (merged_models.h):
  uint64_t merged_batches = 0;   // prefill and decode batches run on a merged copy
  uint64_t merged_made = 0;      // copies made (an adapter merged again after eviction counts again)
  uint64_t merged_resident = 0;  // copies kept now
};

class AdapterCache {
 public:
  // `capacity` >= 1 adapters on `device`, their tensors in `dtype`; blocks of `num_layers` layers.
  AdapterCache(size_t capacity, int num_layers, Device device, DType dtype);
  // The adapter's device copy, loaded now if it is not resident; the caller holds it while a
  // batch uses it. Keyed by the adapter's identity: an adapter that was freed (weak_ptr expired)
  // never matches a new one at the same address. Error when the adapter is not mixable.
  std::shared_ptr<const MixableAdapter> acquire(const std::shared_ptr<const Adapter>& adapter);
  // Evicts least recently used adapters that no batch holds until at most `capacity` remain.
  void trim();
  AdapterCacheStats stats() const;
  size_t capacity() const { return capacity_; }

 private:
  struct Entry {
    std::weak_ptr<const Adapter> source;
    const Adapter* key;
    std::shared_ptr<const MixableAdapter> copy;
  };
  // Drops entries whose adapter is gone, then least recently used ones nobody holds, until at
  // most `keep` remain (or only held ones). Requires mutex_.
  void evict_to(size_t keep);

  const size_t capacity_;
  const int num_layers_;
  const Device device_;
  const DType dtype_;
  mutable std::mutex mutex_;
  std::list<Entry> lru_;  // most recently used first; guarded by mutex_
  std::unique_ptr<HostStaging> staging_;  // page-locked room for the uploads; guarded by mutex_
  uint64_t hits_ = 0, loads_ = 0, evictions_ = 0;
};

}  // namespace lowrank::lora
