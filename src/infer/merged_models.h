#pragma once
// Copies of the base model with one adapter merged, for batches whose every sequence uses that
// adapter (private to infer/). The LoRA paper's inference: W = W0 + s·B·A costs nothing per token,
// where the unmerged path pays LoRA's shrink and expand in every projection (one stream on the
// Qwen2.5-0.5B shape: ~25% of a decode step). A copy holds only the adapted projections' weights
// (the rest is shared with the base model) and its own decode graphs; the numbers differ from the
// unmerged path's by rounding (W + s·B·A is rounded once to the weights' dtype), so a server uses
// them only when asked to (`lowrank serve --merged-adapters N`).
//
// At most `capacity` copies are kept, least recently used dropped first; a copy whose adapter is
// gone (unloaded from the server) is dropped at the next trim(). Keyed by the adapter's identity
// and the user's scale. Making a copy costs a copy of the adapted weights, a GEMM each and new
// decode graphs, so the decoder makes one only for an adapter that keeps its batches to itself
// (BatchDecoder's merge_after_steps), not for every moment a batch happens to hold one adapter.
#include <cstdint>
#include <list>
#include <memory>

#include "lowrank/infer/paged_kv_cache.h"
#include "lowrank/lora/adapter_cache.h"
#include "lowrank/model/model.h"

namespace lowrank::infer {

class DecodeGraphs;

class MergedModels {
 public:
  struct Copy {
    model::Model model;
    std::unique_ptr<DecodeGraphs> graphs;  // null when the step runs eagerly
  };
  // `graphs`: each copy records its decode steps (DecodeGraphs::usable decides for the model).
  MergedModels(size_t capacity, PagedKVCache& cache, bool graphs);
  ~MergedModels();
  // The kept copy for `adapter` at `scale` (now the most recently used), or null.
  Copy* find(const std::shared_ptr<const lora::Adapter>& adapter, double scale);
  // The copy of `base` with `adapter` merged at `scale`, made now from its device copy (acquired
  // from `adapters`) when it is not kept; null when it cannot be merged (an NF4 projection).
  Copy* get(const model::Model& base, const std::shared_ptr<const lora::Adapter>& adapter, double scale,
            lora::AdapterCache& adapters);
  // Drops copies whose adapter is gone.
  void trim();
  size_t capacity() const { return capacity_; }
  uint64_t made() const { return made_; }
  int64_t graph_replays() const;  // of the copies kept
  size_t resident() const { return copies_.size(); }

 private:
  struct Entry {
    std::weak_ptr<const lora::Adapter> source;
    const lora::Adapter* key;
    double scale;
    std::unique_ptr<Copy> copy;  // null: the adapter cannot be merged (asked once)
  };
  // The entry for (adapter, scale), made the most recently used, or null.
  Entry* kept(const std::shared_ptr<const lora::Adapter>& adapter, double scale);
  // Erases the entry after the device has finished the work queued with its weights and graphs.
  std::list<Entry>::iterator drop(std::list<Entry>::iterator it);

  const size_t capacity_;
  PagedKVCache& cache_;
  const bool graphs_;
  std::list<Entry> copies_;  // most recently used first
  uint64_t made_ = 0;
};

}  // namespace lowrank::infer
