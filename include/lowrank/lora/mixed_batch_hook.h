#pragma once
// The LoRA hook of one mixed-adapter batch: every row of the batch carries its own plain-LoRA
// adapter and user scale, or none (the base model), and each adapted projection adds all rows'
// LoRA in one segmented op (ops::lora_rows_: one shrink and one expand launch over the batch, not
// one GEMM pair per adapter). Built per forward from the rows' device adapters (adapter_cache.h):
// one small host table per (layer, target) and one row index tensor on the device. Adapters of
// different ranks and target sets share the batch; a row whose adapter skips a projection is
// left alone there. Holds its adapters, so the cache cannot evict them while it lives.
// Prefills (sequences of kSegmentRows rows or more) of at most kMaxSegments adapters take the SGMV
// road instead: each run of consecutive sequences with the same adapter (the decoder puts them
// next to each other) is one segment, computed with the GEMM ops (x_seg Aᵀ, then s · h Bᵀ into
// y_seg), since the row-at-a-time kernels read A once per row. With more runs than that, the GEMM
// pairs' launches cost more than those reads (a prefill of 64 prompts over 64 adapters is 64 GEMM
// pairs a projection) and the row kernels take every row in one launch pair.
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "lowrank/lora/mixable_adapter.h"
#include "lowrank/model/model.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::lora {

struct RowAdapter {
  std::shared_ptr<const MixableAdapter> adapter;  // null: the row runs the base model
  double user_scale = 1.0;                        // on top of alpha / r, as LoraHook's ActiveAdapter
};

class MixedBatchHook : public model::ProjectionHook {
 public:
  // One entry per sequence of the batch, each `rows_each` consecutive rows of the activations
  // (1 for a decode step, T for a prefill of T tokens); `device`: where the activations are.
  MixedBatchHook(const std::vector<RowAdapter>& sequences, int64_t rows_each, Device device);
  // A decode batch (one row per sequence) whose rows' adapter indices are already on the device:
  // `rows` I32 [n], each an index into `adapters` or -1 (the base model). A decode step recorded as
  // a CUDA graph refills `rows` before each replay; the adapters' pointers are recorded.
  MixedBatchHook(const std::vector<RowAdapter>& adapters, const Tensor& rows);
  void on_projection(int layer, Target target, const model::Linear& base, const Tensor& x, Tensor& y) override;
  // A batch of one row with one adapter is that adapter's update (a one-row batch's adapter set is
  // its row's adapter, so the device-rows form's row is 0 there); anything else: false.
  bool low_rank_update(int layer, Target target, model::LowRankUpdate& update) const override;
  // Distinct (adapter, scale) pairs of the batch.
  size_t adapters() const { return held_.size(); }
  static constexpr int64_t kSegmentRows = 16;
  static constexpr size_t kMaxSegments = 8;  // LOWRANK_LORA_SEGMENTS=N overrides it (A/B timing)

 private:
  // One table per adapted (layer, target) over held_, every table reading `rows`.
  void build_tables(const std::vector<double>& scales, const Tensor& rows);

  std::vector<std::shared_ptr<const MixableAdapter>> held_;  // what the tables point into
  std::map<std::pair<int, int>, ops::LoraRows> tables_;      // by (layer, Target)
  int64_t rows_each_;
  int64_t rows_ = 0;  // rows of the activations
  bool segments_ = false;                  // the segment road (else the row kernels)
  std::vector<int32_t> sequence_adapter_;  // adapter j of each sequence, or -1 (the segment road)
};

}  // namespace lowrank::lora
