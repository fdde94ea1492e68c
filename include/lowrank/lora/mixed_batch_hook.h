#pragma once
// The LoRA hook of one mixed-adapter batch: every row of the batch carries its own plain-LoRA
// adapter and user scale, or none (the base model), and each adapted projection adds all rows'
// LoRA in one segmented op (ops::lora_rows_: one shrink and one expand launch over the batch, not
// one GEMM pair per adapter). Built per forward from the rows' device adapters (adapter_cache.h):
// one small host table per (layer, target) and one row index tensor on the device. Adapters of
// different ranks and target sets share the batch; a row whose adapter skips a projection is
// left alone there. Holds its adapters, so the cache cannot evict them while it lives.
// Prefills that segment_road() picks (many rows in sequences of several rows each) take the SGMV
// road instead: each run of consecutive sequences with the same adapter (the decoder puts them
// next to each other) is one segment of ops::lora_runs_ (on CUDA one grouped GEMM pair for all
// short runs), since the row kernels read A and B once per row and their cost grows with the
// rows. On an H200, a Qwen2.5-0.5B projection (bench_lora_rows): 8,192 rows over 64 adapters
// 0.11–0.46 ms on the row kernels against lora_runs_'s 0.06–0.13; 1,024 rows over 64 adapters
// 0.019–0.052 against 0.047–0.064.
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
  // Which prefills take the segment road: sequences of segment_rows rows or more, and at least
  // runs_rows rows in at most max_segments runs, or many_runs_rows rows. LOWRANK_LORA_SEGMENTS and
  // LOWRANK_LORA_RUNS_ROWS set max_segments and many_runs_rows (A/B timing); tests change it.
  struct SegmentRoad {
    int64_t segment_rows = 16, runs_rows = 1024;
    size_t max_segments = 8;
    int64_t many_runs_rows = 4096;
  };
  static SegmentRoad& segment_road();

 private:
  // One table per adapted (layer, target) over held_, every table reading `rows`.
  void build_tables(const std::vector<double>& scales, const Tensor& rows);

  std::vector<std::shared_ptr<const MixableAdapter>> held_;  // what the tables point into
  std::map<std::pair<int, int>, ops::LoraRows> tables_;      // by (layer, Target)
  int64_t rows_each_;
  int64_t rows_ = 0;  // rows of the activations
  bool segments_ = false;                  // the segment road (else the row kernels)
  std::vector<ops::LoraRun> runs_;         // the segment road's runs of sequences with one adapter
};

}  // namespace lowrank::lora
