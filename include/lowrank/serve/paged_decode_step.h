#pragma once
// DecodeStep over the paged KV cache (infer/batch_decoder.h): a round's sequences run as batches —
// prompts of one length and adapter prefill together, decode steps of one adapter run as one
// forward with paged attention, and plain-LoRA adapters of any rank and target set join the base
// model's batches through segmented LoRA (lora/mixed_batch_hook.h), from a device adapter cache.
// The step `lowrank serve` uses on every device (on the CPU it gives 2.0× the throughput of
// running the sequences one after the other at 16 clients: bench/RESULTS.md, 2026-12-05). A sequence's
// blocks are reserved when it is opened (prompt + max_tokens); a request that does not fit the free
// blocks waits until running sequences return theirs.
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/serve/decode_step.h"

namespace lowrank::serve {

class PagedDecodeStep : public DecodeStep {
 public:
  // A pool of `num_blocks` blocks of PagedKVCache::kDefaultBlockSize positions on the model's
  // device; at most `max_device_adapters` mixable adapters kept there (lora/adapter_cache.h);
  // `merged_adapters` > 0: batches of one adapter run on merged copies of the model, at most that
  // many kept, made after `merge_after_steps` decode steps alone (infer/batch_decoder.h).
  PagedDecodeStep(const model::Model& model, int64_t num_blocks,
                  size_t max_device_adapters = infer::BatchDecoder::kDefaultDeviceAdapters, size_t merged_adapters = 0,
                  int64_t merge_after_steps = infer::BatchDecoder::kMergeAfterSteps);
  // Blocks for max_batch sequences of the model's whole context; on the CPU of at most
  // kCpuPositionsPerPlace positions each, and in all at most a quarter of the machine's memory
  // (at least one place): a long-context model's full contexts for every place of a large batch
  // would be tens of GB of f32. Requests beyond the pool wait for room (room_for).
  static constexpr int64_t kCpuPositionsPerPlace = 4096;
  static int64_t blocks_for_batch(const model::ModelConfig& config, int64_t max_batch, Device device);
  std::unique_ptr<SequenceState> open(int64_t capacity) override;  // Error when the pool is full
  Room room_for(int64_t capacity) const override;
  void run(std::span<StepEntry> batch) override;
  std::optional<lora::AdapterCacheStats> adapter_cache_stats() const override;

 private:
  infer::PagedKVCache cache_;
  infer::BatchDecoder decoder_;
};

}  // namespace lowrank::serve
