#include "lowrank/lora/mixed_batch_hook.h"

#include <cstdlib>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"

namespace lowrank::lora {
namespace {

size_t env_or(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  return v ? static_cast<size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}

}  // namespace

MixedBatchHook::SegmentRoad& MixedBatchHook::segment_road() {
  static SegmentRoad road = [] {
    SegmentRoad r;
    r.max_segments = env_or("LOWRANK_LORA_SEGMENTS", r.max_segments);
    r.many_runs_rows = static_cast<int64_t>(env_or("LOWRANK_LORA_RUNS_ROWS", static_cast<size_t>(r.many_runs_rows)));
    return r;
  }();
  return road;
}

MixedBatchHook::MixedBatchHook(const std::vector<RowAdapter>& sequences, int64_t rows_each, Device device)
    : rows_each_(rows_each) {
  LR_CHECK(rows_each >= 1, "mixed batch: ", rows_each, " rows per sequence");
  // Adapter j of every table is the j-th distinct (adapter, user scale) of the sequences.
  std::map<std::pair<const MixableAdapter*, double>, int32_t> index;
  std::vector<double> scales;
  std::vector<int32_t> row_index(sequences.size(), -1);
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (!sequences[i].adapter) continue;
    auto [it, added] = index.try_emplace({sequences[i].adapter.get(), sequences[i].user_scale},
                                         static_cast<int32_t>(held_.size()));
    if (added) {
      held_.push_back(sequences[i].adapter);
      scales.push_back(sequences[i].user_scale);
    }
    row_index[i] = it->second;
  }
  rows_ = static_cast<int64_t>(sequences.size()) * rows_each;
  for (size_t b = 0, e = 0; b < row_index.size(); b = e) {  // runs of consecutive sequences with one adapter
    for (e = b + 1; e < row_index.size() && row_index[e] == row_index[b];) ++e;
    if (row_index[b] >= 0)
      runs_.push_back({static_cast<int64_t>(b) * rows_each_, static_cast<int64_t>(e) * rows_each_, row_index[b]});
  }
  const SegmentRoad& road = segment_road();
  segments_ = rows_each_ >= road.segment_rows && rows_ >= road.runs_rows &&
              (runs_.size() <= road.max_segments || rows_ >= road.many_runs_rows);
  std::vector<int32_t> expanded;  // one index per row of the activations
  if (!segments_) {
    runs_.clear();
    expanded.reserve(row_index.size() * rows_each_);
    for (int32_t j : row_index) expanded.insert(expanded.end(), rows_each_, j);
  }
  // Shared by every table; the segment road reads runs_ instead.
  build_tables(scales, expanded.empty() ? Tensor() : Tensor::from_ints(expanded, device));
}

MixedBatchHook::MixedBatchHook(const std::vector<RowAdapter>& adapters, const Tensor& rows)
    : rows_each_(1), rows_(rows.numel()) {
  LR_CHECK(rows.dtype() == DType::I32 && rows.rank() == 1, "mixed batch rows ", rows.str());
  std::vector<double> scales;
  for (const RowAdapter& a : adapters) {
    LR_CHECK(a.adapter, "mixed batch: an adapter slot without an adapter");
    held_.push_back(a.adapter);
    scales.push_back(a.user_scale);
  }
  build_tables(scales, rows);
}

void MixedBatchHook::build_tables(const std::vector<double>& scales, const Tensor& row_tensor) {
  for (size_t j = 0; j < held_.size(); ++j) {
    for (const auto& [key, layer] : held_[j]->layers()) {
      auto [it, added] = tables_.try_emplace(key);
      ops::LoraRows& t = it->second;
      if (added) {
        t.a.resize(held_.size());
        t.b.resize(held_.size());
        t.scale.assign(held_.size(), 0.0f);
        t.rows = row_tensor;
      }
      t.a[j] = layer.A;
      t.b[j] = layer.B;
      t.scale[j] = static_cast<float>(layer.scale * scales[j]);
    }
  }
}

bool MixedBatchHook::low_rank_update(int layer, Target target, model::LowRankUpdate& update) const {
  if (rows_ != 1 || held_.size() != 1) return false;
  update = {};
  auto it = tables_.find({layer, static_cast<int>(target)});
  if (it != tables_.end() && it->second.a[0].defined())
    update = {it->second.a[0], it->second.b[0], it->second.scale[0]};
  return true;
}

void MixedBatchHook::on_projection(int layer, Target target, const model::Linear&, const Tensor& x, Tensor& y) {
  auto it = tables_.find({layer, static_cast<int>(target)});
  if (it == tables_.end()) return;  // no row's adapter adapts this projection
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  const ops::LoraRows& t = it->second;
  LR_CHECK(x.dim(0) == rows_, "mixed batch: ", x.str(), " for ", rows_, " rows");
  if (segments_)
    ops::lora_runs_(y, x, t, runs_);
  else
    ops::lora_rows_(y, x, t);
}

}  // namespace lowrank::lora
