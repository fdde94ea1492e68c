#pragma once
// Batched KV-cached decoding over a PagedKVCache: one step feeds new tokens to many sequences at
// once. Prompts (prefill) of the same length and adapter run as one batch through the fused
// attention and write their keys and values into their blocks; single-token decode steps with
// the same adapter run as one batch, attending through their block tables (ops::paged_attention).
// Backend-neutral: on the CPU it is the reference for the CUDA path.
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lowrank/infer/paged_kv_cache.h"
#include "lowrank/infer/token_logprobs.h"
#include "lowrank/lora/adapter_cache.h"
#include "lowrank/lora/mixed_batch_hook.h"
#include "lowrank/model/model.h"

namespace lowrank::infer {

// A sequence of a BatchDecoder: its blocks, reserved for `capacity` positions when it is made and
// returned to the pool when it is destroyed, and the tokens fed so far.
class PagedSequence {
 public:
  // Error when the pool has too few free blocks.
  PagedSequence(PagedKVCache& cache, int64_t capacity);
  ~PagedSequence();
  PagedSequence(const PagedSequence&) = delete;
  PagedSequence& operator=(const PagedSequence&) = delete;

  int64_t length() const { return length_; }  // positions whose keys and values are cached
  int64_t capacity() const { return capacity_; }

 private:
  friend class BatchDecoder;
  PagedKVCache& cache_;
  std::vector<int32_t> blocks_;  // the block table
  std::vector<int32_t> ids_;     // every token fed so far (a recomputation needs them)
  int64_t length_ = 0;
  int64_t capacity_;
};

class DecodeGraphs;
class MergedModels;

struct DecodeEntry {
  PagedSequence* seq = nullptr;
  std::span<const int32_t> tokens;        // the prompt first, then one sampled token per step
  model::ProjectionHook* hook = nullptr;  // the sequence's adapters, or null for the base model
  // The sequence's adapter and user scale for mixed batches: a plain-LoRA adapter of the blocks
  // (lora::is_mixable) runs, from its device copy (the decoder's adapter cache), in one forward
  // with the base model's rows and every other such adapter's (`hook` is then unused); any other
  // adapter runs through `hook`, grouped by hook.
  std::shared_ptr<const lora::Adapter> adapter;
  double adapter_scale = 1.0;
  bool argmax_only = false;               // only the argmax is wanted (greedy without penalty)
  // The caller's next step feeds this sequence its argmax (greedy, and not its last token): the
  // decoder may start that step on the GPU before this one returns (decode_graphs.h).
  bool feeds_argmax = false;
  int prompt_top_logprobs = -1;           // >= 0 with a prompt: score its tokens, with that many alternatives
  std::vector<float> logits;              // out: the next token's logits [V] (unless `argmax` is set)
  std::vector<PositionLogprobs> prompt_logprobs;  // out: with prompt_top_logprobs, the prompt's tokens[1..]
  int32_t argmax = -1;                    // out: the argmax when every entry of its batch wanted only it
  std::string error;                      // out: why this entry failed (the others still run)
};

class BatchDecoder {
 public:
  // `max_device_adapters`: how many mixable adapters the device keeps (lora/adapter_cache.h).
  // `graphs`: decode steps of the base model and mixable adapters replay recorded CUDA graphs where
  // the device allows (decode_graphs.h; LOWRANK_CUDA_GRAPHS=0 turns them off too).
  // `merged_adapters` > 0: a prefill or decode batch whose every sequence uses one mixable adapter
  // at one scale runs on a copy of the model with that adapter merged into its weights (no LoRA
  // cost per token; numbers that differ from the unmerged path's by rounding), at most that many
  // copies kept (merged_models.h). A copy is made once the adapter's decode batches have held it
  // alone for `merge_after_steps` steps in a row (0: at its first batch alone); a batch alone
  // before that runs unmerged. 0 merged_adapters: every adapter runs unmerged.
  BatchDecoder(const model::Model& model, PagedKVCache& cache, size_t max_device_adapters = kDefaultDeviceAdapters,
               bool graphs = true, size_t merged_adapters = 0, int64_t merge_after_steps = kMergeAfterSteps);
  ~BatchDecoder();
  // Feeds every entry's tokens to its sequence and fills its logits (or its error). A sequence's
  // first tokens are a prefill; one token after that is a decode step; several tokens after that,
  // or a step across LongRoPE's switch to its long factors, recompute the whole sequence (as
  // Generator does).
  void step(std::span<DecodeEntry> entries);

  // Decode steps replayed from a recorded graph so far (tests, benchmarks; merged copies' included
  // while they are kept).
  int64_t graph_replays() const;

  // Rows per prefill forward (sequences of one length are split into batches of at most this).
  static constexpr int64_t kPrefillRows = 8192;
  static constexpr size_t kDefaultDeviceAdapters = 64;
  static constexpr int64_t kMergeAfterSteps = 16;
  const lora::AdapterCache& adapter_cache() const { return adapters_; }
  // The adapter cache's counters and the merged copies' (thread-safe: /metrics reads them).
  lora::AdapterCacheStats adapter_stats() const;

 private:
  // What a group runs on: the base model and its graphs (with a mixed hook for the group's
  // adapters), or a merged copy and its graphs (no hook).
  struct Runner {
    const model::Model* model;
    DecodeGraphs* graphs;
    bool merged;
  };
  // The merged copy for a group of one adapter at one scale (and no hook of its own), kept or made
  // now (a decode group: counted in alone_), else the base model.
  Runner runner(const std::vector<DecodeEntry*>& group, model::ProjectionHook* hook, bool decode);
  void prefill(const std::vector<DecodeEntry*>& unordered, int64_t len, model::ProjectionHook* hook, const Runner& run);
  void decode(const std::vector<DecodeEntry*>& group, model::ProjectionHook* hook, const Runner& run);
  // Logits of hidden rows [n, d] to the entries (host f32).
  void emit(const model::Model& m, const Tensor& hidden, const std::vector<DecodeEntry*>& group,
            model::ProjectionHook* hook);
  int32_t slot(const PagedSequence& s, int64_t position) const;
  // Each entry's adapter on the device (acquired from the adapter cache), or empty when no entry
  // of the group has one.
  std::vector<lora::RowAdapter> row_adapters(const std::vector<DecodeEntry*>& group);
  // The mixed-adapter LoRA hook of a group of base-model and mixable-adapter entries (their
  // row_adapters), each entry `rows_each` rows of the forward; null when no entry has an adapter.
  std::unique_ptr<lora::MixedBatchHook> mixed_hook(const std::vector<lora::RowAdapter>& sequences, int64_t rows_each);

  const model::Model& model_;
  PagedKVCache& cache_;
  lora::AdapterCache adapters_;
  std::unique_ptr<DecodeGraphs> graphs_;  // null: every step runs eagerly
  std::unique_ptr<MergedModels> merged_;  // null: adapters always run unmerged
  const int64_t merge_after_;
  // Per (adapter, scale): decode steps in a row in which it had a batch to itself (entries of
  // adapters that were not alone in a step are dropped after it).
  std::map<std::pair<const lora::Adapter*, double>, int64_t> alone_;
  std::atomic<uint64_t> merged_batches_{0}, merged_made_{0}, merged_resident_{0};
};

}  // namespace lowrank::infer
