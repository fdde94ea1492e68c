#pragma once
// Attention of one batched forward through the paged cache (private to infer/): every layer first
// writes its new keys and values into their slots, then a prefill (whole sequences from position
// 0, `tables` undefined) runs the fused causal attention over its own rows, and a decode step (one
// row per sequence) reads each sequence's cached positions through its block table.
#include "lowrank/infer/paged_kv_cache.h"
#include "lowrank/model/attention_cache.h"
#include "lowrank/ops/ops.h"

namespace lowrank::infer {

class PagedAttentionCache : public model::AttentionCache {
 public:
  PagedAttentionCache(PagedKVCache& cache, Tensor slots, Tensor tables = {}, Tensor lens = {}, int64_t max_len = 0)
      : cache_(cache), slots_(std::move(slots)), tables_(std::move(tables)), lens_(std::move(lens)),
        max_len_(max_len) {}

  Tensor attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, const ops::AttentionShape& s) override {
    ops::paged_kv_write_(cache_.k(layer), cache_.v(layer), k, v, slots_);
    // A prefill: its (batch, length) is new at almost every call; the decoder runs it inside a
    // ShapesVary scope, where the attention builds no plan per shape.
    if (!tables_.defined()) return ops::attention(q, k, v, s);
    return ops::paged_attention(q, cache_.k(layer), cache_.v(layer), tables_, lens_, cache_.block_size(), max_len_, s);
  }

  bool paged_row(int layer, Tensor& k_pool, Tensor& v_pool, ops::DecodeRow& row) const override {
    if (!tables_.defined() || slots_.numel() != 1) return false;
    k_pool = cache_.k(layer);
    v_pool = cache_.v(layer);
    row.slot = slots_;
    row.table = tables_;
    row.len = lens_;
    row.block_size = cache_.block_size();
    row.max_len = max_len_;
    return true;
  }

 private:
  PagedKVCache& cache_;
  Tensor slots_;   // I32 [N] pool row of each new row (-1: a padding row)
  Tensor tables_;  // I32 [B, max_blocks] (decode only)
  Tensor lens_;    // I32 [B] cached positions after this step (decode only)
  int64_t max_len_;
};

}  // namespace lowrank::infer
