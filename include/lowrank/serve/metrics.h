#pragma once
// /metrics: the server's counters in Prometheus' text format (version 0.0.4).
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "lowrank/serve/scheduler.h"

namespace lowrank::serve {

class ServerMetrics {
 public:
  void count_response(int status);                  // every HTTP reply, by status
  void count_finished(const std::string& reason);   // generation requests: "stop", "length", "abort", "error"
  std::string render(const SchedulerStats& scheduler, int64_t max_batch, int64_t adapters) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, int64_t> responses_;             // guarded by mutex_
  std::map<std::string, int64_t> finished_;      // guarded by mutex_
};

}  // namespace lowrank::serve
