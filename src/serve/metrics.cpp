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
                                  const std::optional<DeviceMemoryCounters>& memory) const {
  std::ostringstream os;
  auto metric = [&](const char* name, const char* type, const char* help) {
    os << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
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
  metric("lowrank_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
  os << "lowrank_prompt_tokens_total " << s.prompt_tokens << '\n';
  metric("lowrank_generation_tokens_total", "counter", "Tokens generated.");
  os << "lowrank_generation_tokens_total " << s.generated_tokens << '\n';
  metric("lowrank_running_sequences", "gauge", "Sequences in the running batch.");
  os << "lowrank_running_sequences " << s.running << '\n';
  metric("lowrank_queued_sequences", "gauge", "Sequences waiting for a place in the batch.");
  os << "lowrank_queued_sequences " << s.queued << '\n';
  metric("lowrank_batch_size", "gauge", "Sequences stepped in the latest decode round.");
  os << "lowrank_batch_size " << s.last_batch << '\n';
  metric("lowrank_max_batch_size", "gauge", "The most sequences that run at once (--max-batch).");
  os << "lowrank_max_batch_size " << max_batch << '\n';
  metric("lowrank_decode_rounds_total", "counter", "Decode rounds (one step of every running sequence).");
  os << "lowrank_decode_rounds_total " << s.rounds << '\n';
  metric("lowrank_decode_round_sequences_total", "counter",
         "Sum of the rounds' batch sizes (divided by the rounds: the mean batch size).");
  os << "lowrank_decode_round_sequences_total " << s.round_sequences << '\n';
  metric("lowrank_prefill_rounds_total", "counter",
         "Decode rounds that prefilled at least one prompt (also counted in lowrank_decode_rounds_total).");
  os << "lowrank_prefill_rounds_total " << s.prefill_rounds << '\n';
  metric("lowrank_round_seconds_total", "counter",
         "Wall time of the decode rounds' compute, by whether the round prefilled a prompt.");
  os << "lowrank_round_seconds_total{kind=\"prefill\"} " << s.prefill_seconds << '\n';
  os << "lowrank_round_seconds_total{kind=\"decode\"} " << s.decode_seconds << '\n';
  metric("lowrank_queue_seconds_total", "counter",
         "Time sequences waited between their request and a place in the batch, summed over sequences.");
  os << "lowrank_queue_seconds_total " << s.queue_seconds << '\n';
  if (memory) {  // the GPU's caching allocator
    metric("lowrank_device_reserved_bytes", "gauge", "Bytes the device allocator holds from the driver.");
    os << "lowrank_device_reserved_bytes " << memory->reserved << '\n';
    metric("lowrank_device_allocations_total", "counter",
           "Allocations from the driver (cudaMalloc); a steady state adds none, its blocks being reused.");
    os << "lowrank_device_allocations_total " << memory->driver_allocations << '\n';
  }
  metric("lowrank_adapters_loaded", "gauge", "LoRA adapters that requests can name.");
  os << "lowrank_adapters_loaded " << adapters << '\n';
  if (cache) {  // the paged step's adapter cache (--max-gpu-adapters)
    metric("lowrank_adapter_cache_hits_total", "counter",
           "Adapters a batch needed that were on the device already (once per batch and adapter).");
    os << "lowrank_adapter_cache_hits_total " << cache->hits << '\n';
    metric("lowrank_adapter_cache_loads_total", "counter", "Adapters copied from host memory to the device.");
    os << "lowrank_adapter_cache_loads_total " << cache->loads << '\n';
    metric("lowrank_adapter_cache_evictions_total", "counter",
           "Adapters dropped from the device (least recently used beyond --max-gpu-adapters, or unloaded).");
    os << "lowrank_adapter_cache_evictions_total " << cache->evictions << '\n';
    metric("lowrank_adapter_cache_resident", "gauge", "Adapters on the device now.");
    os << "lowrank_adapter_cache_resident " << cache->resident << '\n';
    metric("lowrank_adapter_cache_bytes", "gauge", "Bytes of the adapters on the device.");
    os << "lowrank_adapter_cache_bytes " << cache->bytes << '\n';
    metric("lowrank_merged_batches_total", "counter",
           "Prefill and decode batches of one adapter run on a merged copy of the model (--merged-adapters).");
    os << "lowrank_merged_batches_total " << cache->merged_batches << '\n';
    metric("lowrank_merged_copies_made_total", "counter", "Copies of the model made with an adapter merged.");
    os << "lowrank_merged_copies_made_total " << cache->merged_made << '\n';
    metric("lowrank_merged_copies_resident", "gauge", "Merged copies of the model kept now.");
    os << "lowrank_merged_copies_resident " << cache->merged_resident << '\n';
  }
  return os.str();
}

}  // namespace lowrank::serve
