#pragma once
// Decode steps replayed from recorded device graphs (private to infer/). A decode step of a small
// model is hundreds of kernels of a few microseconds each, so the host's launch cost is most of
// the step; recorded once and replayed with one launch, the step costs what the GPU needs.
//
// One graph per (batch bucket, length bucket): the batch is padded to a power of two (padding rows
// write no keys or values and their outputs are ignored) and the longest sequence's length to a
// power of two of at least kMinLength (the decode attention is sized by it; it reads each
// sequence's own length on the device). The inputs live in one device buffer per graph, refilled
// before each replay; the outputs are read after it. The first step of a bucket runs eagerly
// (cuBLASLt and cuDNN make their choices then), the second records the graph.
//
// Mixed-adapter steps (plain LoRA adapters on the GPU, lora/mixed_batch_hook.h) are buckets too,
// keyed by their set of distinct (adapter, scale) as well: each row's index into the set is one
// more input, and the adapters' device pointers are recorded. A bucket keeps only weak references
// to its adapters (it never pins them in the adapter cache) and replays only while the step's
// adapters are those very objects; a set that is gone is recorded anew. At most
// kMaxAdapterBuckets such buckets are kept (the least recently used goes).
//
// One prompt's prefill (the base model or a merged copy, no hook) is replayed too, from a graph per
// padded length (prefill() below): a 128-token prompt's prefill round through HTTP took 3.1–3.6 ms
// op by op, 1.6 ms replayed (one H100).
//
// One step ahead: a greedy caller may pass the step it expects next (its tokens not yet known).
// Each graph ends by writing its argmax into the ids of the next step's inputs, so the bucket's
// other graph is replayed at once with the next positions, slots and lengths; the host reads the
// first step's tokens while the device runs the second, and the next run() that asks for exactly
// that step (the same rows, with the tokens just returned) only reads its tokens back. A step
// started ahead that is not asked for (a sequence ended, one joined) still runs: its keys and
// values land in its rows' next slots, which a real step fills again with the same values or
// which belong to a sequence that ended (one stream: anything queued later comes after it).
// Two sides a bucket: side k reads its own inputs and writes its argmax into the other side's
// ids, and steps started ahead alternate sides, so the next step's inputs are uploaded, and the
// last step's tokens read back, beside the device's stream (HostStaging's copies beside it) while
// a step runs, not between two steps. Steps fed by the host run on side 0.
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "lowrank/core/device_event.h"
#include "lowrank/core/device_graph.h"
#include "lowrank/core/host_staging.h"
#include "lowrank/infer/paged_kv_cache.h"
#include "lowrank/lora/mixed_batch_hook.h"
#include "lowrank/model/model.h"

namespace lowrank::infer {

class DecodeGraphs {
 public:
  static constexpr int64_t kMaxBatch = 256;
  static constexpr int64_t kMinLength = 256;
  static constexpr size_t kMaxAdapterBuckets = 8;

  // Whether the model's decode steps can be recorded: on a CUDA device, without LongRoPE (its
  // tables switch with the length), unless LOWRANK_CUDA_GRAPHS=0.
  static bool usable(const model::Model& model);
  DecodeGraphs(const model::Model& model, PagedKVCache& cache);

  // One decode step of B sequences: the rows' token ids, positions, KV-cache slots and lengths
  // after the step (each [B]), their block tables [B, width], the longest length, and each row's
  // adapter on the device (empty, or [B] with null for the base model). False (nothing done) when
  // the step has no bucket (too many rows, too long); else fills the argmax of each row, and
  // `logits` [B*V] (host f32) unless argmax_only.
  struct Step {
    std::vector<int32_t> ids, pos, slots, lens, tables;
    int64_t width = 0, max_len = 0;
    std::vector<lora::RowAdapter> adapters;
  };
  // `next` (argmax_only only; its ids are ignored): the step the caller will ask for next, with
  // this step's argmax as its tokens: started before this call returns when it falls in the same
  // bucket (see above).
  bool run(const Step& step, bool argmax_only, std::vector<int32_t>& argmax, std::vector<float>& logits,
           const Step* next = nullptr);

  // One sequence's prompt from position 0 with no hook (the base model, or a merged copy): its
  // token ids and their KV-cache slots. The rows are padded to a power of two of at least
  // kMinPrefillRows; padding rows come after the prompt (the causal attention keeps them out of
  // its rows), write no keys or values and are not read. One graph per padded length, recorded at
  // that length's second prefill (the first runs eagerly), so that a short prompt's prefill costs
  // the GPU's time, not hundreds of launches. False (nothing done) for a prompt longer than
  // kMaxPrefillRows or than the model's positions. Fills the last row's argmax and, unless
  // argmax_only, its logits [V].
  static constexpr int64_t kMinPrefillRows = 16;
  static constexpr int64_t kMaxPrefillRows = 512;
  bool prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& slots, bool argmax_only, int32_t& argmax,
               std::vector<float>& logits);
  int64_t replays() const { return replays_; }

 private:
  using AdapterSet = std::vector<std::pair<const lora::MixableAdapter*, double>>;  // (adapter, scale), sorted
  using Key = std::tuple<int64_t, int64_t, AdapterSet>;                          // (batch, length, set)
  struct Side {
    // I32 [batch * (5 + width)]: ids, pos, slots, lens, each row's adapter index (-1: none), then
    // the tables
    Tensor inputs;
    Tensor logits;  // output: f32 [batch, V]
    std::unique_ptr<DeviceGraph> graph;
    std::unique_ptr<DeviceEvent> done;  // after this side's last run
  };
  struct Bucket {
    int64_t batch = 0, length = 0, width = 0;
    Side sides[2];  // side k writes its argmax into argmax(k): the ids of sides[1 - k]
    bool warmed = false;
    bool eager = false;  // recording failed: this bucket runs without a graph
    std::vector<std::weak_ptr<const lora::MixableAdapter>> adapters;  // the set's, in key order
    int64_t last_used = 0;
    Tensor argmax(int k) const { return sides[1 - k].inputs.slice_rows(0, batch); }  // I32 [batch]
  };
  struct PrefillBucket {
    int64_t rows = 0;
    Tensor inputs;  // I32 [3 * rows + 1]: ids, positions, slots (-1: padding), the prompt's last row
    Tensor pick;    // output: I32 [1]
    Tensor logits;  // output: f32 [1, V]
    std::unique_ptr<DeviceGraph> graph;
    bool warmed = false;
    bool eager = false;  // recording failed: this length runs without a graph
  };
  void forward_prefill(PrefillBucket& b);
  // Runs side k's forward on its inputs (eagerly, or while recording) and keeps its outputs;
  // `set`: the step's adapters in the bucket's order.
  void forward(Bucket& b, int k, const std::vector<lora::RowAdapter>& set);
  // Records side k's graph; false (b.eager set) when the step cannot be recorded.
  bool record(Bucket& b, int k, const std::vector<lora::RowAdapter>& set);
  // Runs side k: its graph's replay, or its forward eagerly; after the read of its last argmax.
  void run_side(Bucket& b, int k, const std::vector<lora::RowAdapter>& set);
  // Whether `b` was made for these very adapters (not others at the same addresses).
  static bool same_adapters(const Bucket& b, const std::vector<lora::RowAdapter>& set);
  void evict_adapter_buckets(const Key& keep);
  // The bucket's input buffer for step s (row_adapter: each row's index into the bucket's set).
  static std::vector<int32_t> inputs_of(const Bucket& b, const Step& s, const std::vector<int32_t>& row_adapter);
  // Replays side k's graph on `next`'s inputs (its ids: the argmax the other side left there) and
  // queues the read of its argmax into readback(k).
  void start_ahead(Bucket& b, const Key& key, const Step& next, const std::vector<int32_t>& row_adapter, int k);
  // Queues the read of side k's argmax (n rows) into readback(k), beside the device's stream
  // unless LOWRANK_DECODE_BESIDE=0; read_argmax: n rows' argmax from readback(k), once landed.
  void queue_read(Bucket& b, int k, int64_t n);
  void read_argmax(int k, int64_t n, std::vector<int32_t>& argmax);
  // Waits until no copy beside the stream is in flight (before a bucket's memory is freed).
  void settle_copies();
  // Same rows with the same adapters; the very same step; whether `next` (null: none) can start
  // ahead of s in s's bucket of `length`.
  static bool same_rows(const Step& a, const Step& b);
  static bool same_step(const Step& a, const Step& b);
  bool fits_ahead(const Step& s, const Step* next, int64_t length) const;

  const model::Model& model_;
  PagedKVCache& cache_;
  std::shared_ptr<DeviceGraphPool> pool_;  // shared: replays never overlap (one stream)
  std::map<Key, Bucket> buckets_;
  std::map<int64_t, PrefillBucket> prefills_;  // by padded rows
  int64_t replays_ = 0, steps_ = 0;
  // The step started ahead (active), its bucket, rows' adapter indices and side; step.ids: the
  // tokens it ran on (the argmax returned before it).
  struct Ahead {
    bool active = false;
    Key key;
    Step step;
    std::vector<int32_t> row_adapter;
    int side = 0;
  } ahead_;
  // Per side (made on first use): its argmax read back [kMaxBatch], and the inputs of a step
  // started ahead on it.
  std::unique_ptr<HostStaging> readbacks_[2], uploads_[2];
  HostStaging& readback(int k);
};

}  // namespace lowrank::infer
