#pragma once
// /metrics: the server's counters in Prometheus' text format (version 0.0.4).
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "lowrank/core/device_memory.h"
#include "lowrank/lora/adapter_cache.h"
#include "lowrank/serve/adapter_registry.h"
#include "lowrank/serve/scheduler.h"

namespace lowrank::serve {

class ServerMetrics {
 public:
  void count_response(int status);                  // every HTTP reply, by status
  void count_finished(const std::string& reason);   // generation requests: "stop", "length", "abort", "error"
  // `cache`: the decode step's device adapter cache, when it has one; `memory`: the GPU's allocator;
  // `folder`: --adapter-dir's loads, when the server has one.
  std::string render(const SchedulerStats& scheduler, int64_t max_batch, int64_t adapters,
                     const std::optional<lora::AdapterCacheStats>& cache = std::nullopt,
                     const std::optional<DeviceMemoryCounters>& memory = std::nullopt,
                     const std::optional<AdapterFolderStats>& folder = std::nullopt) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, int64_t> responses_;             // guarded by mutex_
  std::map<std::string, int64_t> finished_;      // guarded by mutex_
};

}  // namespace lowrank::serve
