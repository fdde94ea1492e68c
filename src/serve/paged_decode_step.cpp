#include "lowrank/serve/paged_decode_step.h"

#include <unistd.h>

#include <algorithm>

namespace lowrank::serve {
namespace {

struct PagedSequenceState : SequenceState {
  explicit PagedSequenceState(infer::PagedKVCache& cache, int64_t capacity) : seq(cache, capacity) {}
  infer::PagedSequence seq;
};

}  // namespace

PagedDecodeStep::PagedDecodeStep(const model::Model& model, int64_t num_blocks, size_t max_device_adapters,
                                 size_t merged_adapters, int64_t merge_after_steps)
    : cache_(model.config(), model.device(), model.weights().embed.dtype(), num_blocks),
      decoder_(model, cache_, max_device_adapters, true, merged_adapters, merge_after_steps) {}

std::optional<lora::AdapterCacheStats> PagedDecodeStep::adapter_cache_stats() const { return decoder_.adapter_stats(); }

int64_t PagedDecodeStep::blocks_for_batch(const model::ModelConfig& c, int64_t max_batch, Device device) {
  const int64_t bs = infer::PagedKVCache::kDefaultBlockSize;
  if (!device.is_cpu()) return max_batch * ((c.max_position_embeddings + bs - 1) / bs);
  const int64_t per_place = (std::min(c.max_position_embeddings, kCpuPositionsPerPlace) + bs - 1) / bs;
  // At most a quarter of the machine's memory (f32 blocks), at least one place's.
  const int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
  const int64_t budget = memory > 0 ? memory / 4 / infer::PagedKVCache::block_bytes(c, DType::F32, bs) : per_place;
  return std::max(per_place, std::min(max_batch * per_place, budget));
}

DecodeStep::Room PagedDecodeStep::room_for(int64_t capacity) const {
  const int64_t blocks = cache_.blocks_for(capacity);
  return blocks <= cache_.free_blocks() ? Room::Now : blocks <= cache_.num_blocks() ? Room::Later : Room::Never;
}

std::unique_ptr<SequenceState> PagedDecodeStep::open(int64_t capacity) {
  return std::make_unique<PagedSequenceState>(cache_, capacity);
}

void PagedDecodeStep::run(std::span<StepEntry> batch) {
  std::vector<infer::DecodeEntry> entries(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    entries[i].seq = &static_cast<PagedSequenceState*>(batch[i].state)->seq;
    entries[i].tokens = batch[i].tokens;
    entries[i].hook = batch[i].hook;
    entries[i].adapter = batch[i].adapter;
    entries[i].adapter_scale = batch[i].adapter_scale;
    entries[i].argmax_only = batch[i].argmax_only;
    entries[i].feeds_argmax = batch[i].feeds_argmax;
    entries[i].prompt_top_logprobs = batch[i].prompt_top_logprobs;
  }
  decoder_.step(entries);
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].logits = std::move(entries[i].logits);
    batch[i].argmax = entries[i].argmax;
    batch[i].prompt_logprobs = std::move(entries[i].prompt_logprobs);
    batch[i].error = std::move(entries[i].error);
  }
}

}  // namespace lowrank::serve
