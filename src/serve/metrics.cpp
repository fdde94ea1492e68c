#include "lowrank/serve/metrics.h"

#include <sstream>

namespace lowrank::serve {

void ServerMetrics::count_response(int status) {
  std::lock_guard lock(mutex_);
  ++responses_[status];
}

void ServerMetrics::count_finished(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++finished_[reason];
}

std::string ServerMetrics::render(const SchedulerStats& s, int64_t max_batch, int64_t adapters,
                                  const std::optional<lora::AdapterCacheStats>& cache,
                                  const std::optional<DeviceMemoryCounters>& memory,
                                  const std::optional<AdapterFolderStats>& folder) const {
  std::ostringstream os;
  auto metric = [&](const char* name, const char* type, const char* help) {
    os << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  // A metric of one value, without labels.
  auto one = [&](const char* name, const char* type, const char* help, const auto& value) {
    metric(name, type, help);
    os << name << ' ' << value << '\n';
  };
  {
    std::lock_guard lock(mutex_);
    metric("lowrank_http_responses_total", "counter", "HTTP replies sent, by status code.");
    for (const auto& [status, n] : responses_) os << "lowrank_http_responses_total{code=\"" << status << "\"} " << n << '\n';
    metric("lowrank_requests_finished_total", "counter",
           "Generation requests finished, by reason (stop: eos or a stop string; length: max_tokens; abort: "
           "the client went away; error).");
    for (const auto& [reason, n] : finished_)
      os << "lowrank_requests_finished_total{finish_reason=\"" << reason << "\"} " << n << '\n';
  }
  one("lowrank_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens);
  one("lowrank_generation_tokens_total", "counter", "Tokens generated.", s.generated_tokens);
  one("lowrank_running_sequences", "gauge", "Sequences in the running batch.", s.running);
  one("lowrank_queued_sequences", "gauge", "Sequences waiting for a place in the batch.", s.queued);
  one("lowrank_batch_size", "gauge", "Sequences stepped in the latest decode round.", s.last_batch);
  one("lowrank_max_batch_size", "gauge", "The most sequences that run at once (--max-batch).", max_batch);
  one("lowrank_decode_rounds_total", "counter", "Decode rounds (one step of every running sequence).", s.rounds);
  one("lowrank_decode_round_sequences_total", "counter",
      "Sum of the rounds' batch sizes (divided by the rounds: the mean batch size).", s.round_sequences);
  one("lowrank_prefill_rounds_total", "counter",
      "Decode rounds that prefilled at least one prompt (also counted in "
      "lowrank_decode_rounds_total).", s.prefill_rounds);
  metric("lowrank_round_seconds_total", "counter",
         "Wall time of the decode rounds' compute, by whether the round prefilled a prompt.");
  os << "lowrank_round_seconds_total{kind=\"prefill\"} " << s.prefill_seconds << '\n';
  os << "lowrank_round_seconds_total{kind=\"decode\"} " << s.decode_seconds << '\n';
  one("lowrank_queue_seconds_total", "counter",
      "Time sequences waited between their request and a place in the batch, summed over sequences.", s.queue_seconds);
  if (memory) {  // the GPU's caching allocator
    one("lowrank_device_reserved_bytes", "gauge",
        "Bytes the device allocator holds from the driver.", memory->reserved);
    one("lowrank_device_allocations_total", "counter",
        "Allocations from the driver (cudaMalloc); a steady state adds none, its blocks being "
        "reused.", memory->driver_allocations);
  }
  one("lowrank_adapters_loaded", "gauge", "LoRA adapters that requests can name.", adapters);
  if (folder) {  // --adapter-dir
    one("lowrank_adapter_folder_loads_total", "counter", "Adapters loaded from --adapter-dir on first use.", folder->loads);
    one("lowrank_adapter_folder_evictions_total", "counter",
        "Adapters from --adapter-dir unloaded to stay within --max-loaded-adapters.", folder->evictions);
  }
  if (cache) {  // the paged step's adapter cache (--max-gpu-adapters)
    one("lowrank_adapter_cache_hits_total", "counter",
        "Adapters a batch needed that were on the device already (once per batch and adapter).", cache->hits);
    one("lowrank_adapter_cache_loads_total", "counter",
        "Adapters copied from host memory to the device.", cache->loads);
    one("lowrank_adapter_cache_evictions_total", "counter",
        "Adapters dropped from the device (least recently used beyond --max-gpu-adapters, or "
        "unloaded).", cache->evictions);
    one("lowrank_adapter_cache_resident", "gauge", "Adapters on the device now.", cache->resident);
    one("lowrank_adapter_cache_bytes", "gauge", "Bytes of the adapters on the device.", cache->bytes);
    one("lowrank_merged_batches_total", "counter",
        "Prefill and decode batches of one adapter run on a merged copy of the model "
        "(--merged-adapters).", cache->merged_batches);
    one("lowrank_merged_copies_made_total", "counter",
        "Copies of the model made with an adapter merged.", cache->merged_made);
    one("lowrank_merged_copies_resident", "gauge", "Merged copies of the model kept now.", cache->merged_resident);
  }
  return os.str();
}

}  // namespace lowrank::serve
