#include "lowrank/infer/batch_decoder.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <map>
#include <string_view>

#include "lowrank/core/error.h"
#include "lowrank/core/shapes_vary.h"
#include "lowrank/ops/ops.h"
#include "decode_graphs.h"
#include "merged_models.h"
#include "paged_attention_cache.h"

namespace lowrank::infer {

PagedSequence::PagedSequence(PagedKVCache& cache, int64_t capacity)
    : cache_(cache), blocks_(cache.allocate(capacity)), capacity_(capacity) {}

PagedSequence::~PagedSequence() { cache_.release(blocks_); }

BatchDecoder::BatchDecoder(const model::Model& model, PagedKVCache& cache, size_t max_device_adapters, bool graphs,
                           size_t merged_adapters, int64_t merge_after_steps)
    : model_(model), cache_(cache),
      adapters_(max_device_adapters, static_cast<int>(model.config().num_layers), model.device(),
                model.weights().embed.dtype()),
      merge_after_(merge_after_steps) {
  if (graphs && DecodeGraphs::usable(model)) graphs_ = std::make_unique<DecodeGraphs>(model, cache);
  if (merged_adapters > 0) merged_ = std::make_unique<MergedModels>(merged_adapters, cache, graphs);
}

BatchDecoder::~BatchDecoder() = default;

int64_t BatchDecoder::graph_replays() const {
  return (graphs_ ? graphs_->replays() : 0) + (merged_ ? merged_->graph_replays() : 0);
}

lora::AdapterCacheStats BatchDecoder::adapter_stats() const {
  lora::AdapterCacheStats s = adapters_.stats();
  s.merged_batches = merged_batches_;
  s.merged_made = merged_made_;
  s.merged_resident = merged_resident_;
  return s;
}

BatchDecoder::Runner BatchDecoder::runner(const std::vector<DecodeEntry*>& group, model::ProjectionHook* hook,
                                          bool decode) {
  const Runner base{&model_, graphs_.get(), false};
  if (!merged_ || hook || group.empty() || !group[0]->adapter) return base;
  const std::shared_ptr<const lora::Adapter>& adapter = group[0]->adapter;
  const double scale = group[0]->adapter_scale;
  for (const DecodeEntry* e : group)
    if (e->adapter != adapter || e->adapter_scale != scale) return base;
  MergedModels::Copy* copy = merged_->find(adapter, scale);
  if (!copy && (merge_after_ == 0 || (decode && ++alone_[{adapter.get(), scale}] >= merge_after_)))
    copy = merged_->get(model_, adapter, scale, adapters_);
  if (!copy) return base;
  ++merged_batches_;
  return {&copy->model, copy->graphs.get(), true};
}

std::vector<lora::RowAdapter> BatchDecoder::row_adapters(const std::vector<DecodeEntry*>& group) {
  if (std::none_of(group.begin(), group.end(), [](const DecodeEntry* e) { return e->adapter != nullptr; }))
    return {};
  std::map<const lora::Adapter*, std::shared_ptr<const lora::MixableAdapter>> copies;  // one acquire per adapter
  std::vector<lora::RowAdapter> sequences;
  for (const DecodeEntry* e : group) {
    std::shared_ptr<const lora::MixableAdapter> copy;
    if (e->adapter) {
      auto& c = copies[e->adapter.get()];
      if (!c) c = adapters_.acquire(e->adapter);
      copy = c;
    }
    sequences.push_back({copy, e->adapter_scale});
  }
  return sequences;
}

std::unique_ptr<lora::MixedBatchHook> BatchDecoder::mixed_hook(const std::vector<lora::RowAdapter>& sequences,
                                                               int64_t rows_each) {
  if (sequences.empty()) return nullptr;
  return std::make_unique<lora::MixedBatchHook>(sequences, rows_each, model_.device());
}

int32_t BatchDecoder::slot(const PagedSequence& s, int64_t position) const {
  const int64_t bs = cache_.block_size();
  return static_cast<int32_t>(s.blocks_[position / bs] * bs + position % bs);
}

void BatchDecoder::step(std::span<DecodeEntry> entries) {
  const model::ModelConfig& c = model_.config();
  // Groups that run as one forward: prefills by (length, hook), decodes by (hook, LongRoPE side).
  std::map<std::pair<int64_t, model::ProjectionHook*>, std::vector<DecodeEntry*>> prefills;
  std::map<std::pair<model::ProjectionHook*, bool>, std::vector<DecodeEntry*>> decodes;
  for (DecodeEntry& e : entries) {
    e.logits.clear();
    e.prompt_logprobs.clear();
    e.error.clear();
    e.argmax = -1;
    try {
      LR_CHECK(e.seq, "decode entry without a sequence");
      PagedSequence& s = *e.seq;
      const auto n = static_cast<int64_t>(e.tokens.size());
      if (n == 0) throw error("no tokens to feed");
      for (int32_t id : e.tokens)
        if (id < 0 || id >= c.vocab_size) throw error("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
      const auto total = static_cast<int64_t>(s.ids_.size()) + n;
      if (total > s.capacity_)
        throw error("sequence of ", total, " positions is longer than the ", s.capacity_, " reserved for it");
      // Mixable adapters join the base model's group (hook null), which runs a mixed hook.
      const bool mixes = e.adapter && lora::is_mixable(*e.adapter, static_cast<int>(c.num_layers));
      if (e.adapter && !mixes && !e.hook) throw error("an adapter that does not mix needs its own hook");
      model::ProjectionHook* hook = mixes ? nullptr : e.hook;
      s.ids_.insert(s.ids_.end(), e.tokens.begin(), e.tokens.end());
      if (s.length_ == 0 || n > 1 || model_.rope_changes(s.length_, total)) {
        s.length_ = 0;  // (re)computed from the first position
        prefills[{total, hook}].push_back(&e);
      } else {
        decodes[{hook, model_.rope_changes(0, total)}].push_back(&e);
      }
    } catch (const std::exception& ex) {
      e.error = ex.what();
    }
  }
  auto run = [](const std::vector<DecodeEntry*>& group, auto&& body) {
    try {
      body();
    } catch (const std::exception& ex) {  // the group's sequences fail; other groups still run
      for (DecodeEntry* e : group) {
        e->error = ex.what();
        e->seq->length_ = 0;
        e->seq->ids_.clear();
      }
    }
  };
  // (Named members, not structured bindings: clang 14, the fuzz build's compiler, cannot capture those.)
  for (auto& entry : prefills) {
    const std::vector<DecodeEntry*>& group = entry.second;
    model::ProjectionHook* hook = entry.first.second;
    const int64_t len = entry.first.first, per = std::max<int64_t>(1, kPrefillRows / len);
    for (size_t i = 0; i < group.size(); i += per) {
      std::vector<DecodeEntry*> part(group.begin() + i, group.begin() + std::min(group.size(), i + per));
      run(part, [&] { prefill(part, len, hook, runner(part, hook, false)); });
    }
  }
  for (auto& entry : decodes) {
    std::vector<DecodeEntry*>& group = entry.second;
    model::ProjectionHook* hook = entry.first.first;
    run(group, [&] { decode(group, hook, runner(group, hook, true)); });
  }
  // An adapter's count of steps alone goes on only while every step has a batch of it alone.
  for (auto it = alone_.begin(); it != alone_.end();) {
    const bool alone_now = std::any_of(decodes.begin(), decodes.end(), [&](const auto& d) {
      const std::vector<DecodeEntry*>& g = d.second;
      return !d.first.first && std::all_of(g.begin(), g.end(), [&](const DecodeEntry* e) {
        return e->adapter.get() == it->first.first && e->adapter_scale == it->first.second;
      });
    });
    it = alone_now ? std::next(it) : alone_.erase(it);
  }
  if (merged_) {
    merged_->trim();  // copies of adapters that are gone
    merged_made_ = merged_->made();
    merged_resident_ = merged_->resident();
  }
  adapters_.trim();  // adapters held beyond the capacity by this step's batches
}

void BatchDecoder::prefill(const std::vector<DecodeEntry*>& unordered, int64_t len, model::ProjectionHook* hook,
                           const Runner& run) {
  // Sequences of one (adapter, scale) next to each other, in order of first appearance: the
  // mixed hook then runs each adapter's rows as one segment (one GEMM pair, not one a sequence).
  std::vector<DecodeEntry*> group = unordered;
  std::map<std::pair<const lora::Adapter*, double>, size_t> first;
  for (const DecodeEntry* e : group) first.try_emplace({e->adapter.get(), e->adapter_scale}, first.size());
  std::stable_sort(group.begin(), group.end(), [&](const DecodeEntry* a, const DecodeEntry* b) {
    return first.at({a->adapter.get(), a->adapter_scale}) < first.at({b->adapter.get(), b->adapter_scale});
  });
  const auto B = static_cast<int64_t>(group.size());
  std::vector<int32_t> ids, pos, slots, last_rows;
  for (int64_t b = 0; b < B; ++b) {
    const PagedSequence& s = *group[b]->seq;
    ids.insert(ids.end(), s.ids_.begin(), s.ids_.end());
    for (int64_t t = 0; t < len; ++t) {
      pos.push_back(static_cast<int32_t>(t));
      slots.push_back(slot(s, t));
    }
    last_rows.push_back(static_cast<int32_t>(b * len + len - 1));
  }
  const model::Model& m = *run.model;
  const ShapesVary varying;  // B·len rows: new at almost every prefill (no GEMM tuning; larger cached blocks)
  // One prompt on the base model or a merged copy: replayed from a graph per padded length.
  DecodeEntry& only = *group[0];
  if (B == 1 && !hook && (run.merged || !only.adapter) && only.prompt_top_logprobs < 0 && run.graphs &&
      run.graphs->prefill(ids, slots, only.argmax_only, only.argmax, only.logits)) {
    only.seq->length_ = len;
    if (!only.argmax_only) only.argmax = -1;
    return;
  }
  PagedAttentionCache attention(cache_, Tensor::from_ints(slots, m.device()));
  const std::unique_ptr<lora::MixedBatchHook> mixed = hook || run.merged ? nullptr : mixed_hook(row_adapters(group), len);
  if (mixed) hook = mixed.get();
  Tensor h = m.hidden_states_at({ids, B, len}, pos, hook, attention);
  for (int64_t b = 0; b < B; ++b) {
    DecodeEntry& e = *group[b];
    e.seq->length_ = len;
    if (e.prompt_top_logprobs >= 0)
      e.prompt_logprobs = prompt_logprobs(m, h.slice_rows(b * len, (b + 1) * len), e.seq->ids_, e.prompt_top_logprobs, hook);
  }
  emit(m, ops::embedding(h, last_rows), group, hook);  // each sequence's last row
}

void BatchDecoder::decode(const std::vector<DecodeEntry*>& group, model::ProjectionHook* hook, const Runner& run) {
  const auto B = static_cast<int64_t>(group.size());
  // The group's step, or (ahead = 1) the one after it, each row fed one more token (ids then -1:
  // not known yet); no adapters yet.
  auto decode_step = [&](int64_t ahead) {
    DecodeGraphs::Step s;
    for (DecodeEntry* e : group) s.max_len = std::max(s.max_len, e->seq->length_ + 1 + ahead);
    s.width = cache_.blocks_for(s.max_len);
    s.ids.resize(B);
    s.pos.resize(B);
    s.slots.resize(B);
    s.lens.resize(B);
    s.tables.assign(B * s.width, 0);
    for (int64_t b = 0; b < B; ++b) {
      const PagedSequence& q = *group[b]->seq;
      const int64_t position = q.length_ + ahead;
      s.ids[b] = ahead ? -1 : q.ids_.back();
      s.pos[b] = static_cast<int32_t>(position);
      s.slots[b] = slot(q, position);
      s.lens[b] = static_cast<int32_t>(position + 1);
      const int64_t used = cache_.blocks_for(position + 1);
      std::copy(q.blocks_.begin(), q.blocks_.begin() + used, s.tables.begin() + b * s.width);
    }
    return s;
  };
  DecodeGraphs::Step s = decode_step(0);
  // Without a hook of its own the group runs the base model and mixable adapters (one graph), or
  // a merged copy (its own graphs, no adapters).
  s.adapters = hook || run.merged ? std::vector<lora::RowAdapter>{} : row_adapters(group);
  DecodeGraphs* graphs = run.graphs;
  if (!hook && graphs) {
    const bool argmax_only = std::all_of(group.begin(), group.end(), [](const DecodeEntry* e) { return e->argmax_only; });
    // The step after this one, when every row will be fed its argmax and has room for it
    // (LOWRANK_DECODE_AHEAD=0: never, for A/B timing).
    static const bool ahead_enabled = [] {
      const char* v = std::getenv("LOWRANK_DECODE_AHEAD");
      return !(v && std::string_view(v) == "0");
    }();
    const bool ahead = ahead_enabled && argmax_only && std::all_of(group.begin(), group.end(), [](const DecodeEntry* e) {
                         return e->feeds_argmax && e->seq->length_ + 2 <= e->seq->capacity_;
                       });
    DecodeGraphs::Step next;
    if (ahead) {
      next = decode_step(1);
      next.adapters = s.adapters;
    }
    std::vector<int32_t> argmax;
    std::vector<float> logits;
    if (graphs->run(s, argmax_only, argmax, logits, ahead ? &next : nullptr)) {
      const int64_t V = argmax_only ? 0 : static_cast<int64_t>(logits.size()) / B;
      for (int64_t b = 0; b < B; ++b) {
        ++group[b]->seq->length_;
        if (argmax_only) group[b]->argmax = argmax[b];
        else group[b]->logits.assign(logits.begin() + b * V, logits.begin() + (b + 1) * V);
      }
      return;
    }
  }
  const model::Model& m = *run.model;
  const Device d = m.device();
  PagedAttentionCache attention(cache_, Tensor::from_ints(s.slots, d),
                           Tensor::from_ints(s.tables, d).reshape({B, s.width}), Tensor::from_ints(s.lens, d), s.max_len);
  const std::unique_ptr<lora::MixedBatchHook> mixed = hook ? nullptr : mixed_hook(s.adapters, 1);
  if (mixed) hook = mixed.get();
  Tensor h = m.hidden_states_at({s.ids, B, 1}, s.pos, hook, attention);
  for (DecodeEntry* e : group) ++e->seq->length_;
  emit(m, h, group, hook);
}

void BatchDecoder::emit(const model::Model& m, const Tensor& hidden, const std::vector<DecodeEntry*>& group,
                        model::ProjectionHook* hook) {
  if (std::all_of(group.begin(), group.end(), [](const DecodeEntry* e) { return e->argmax_only; })) {
    // Greedy batches read back B ids, not [B, V] logits (39 MB a step at batch 64 for Qwen's vocabulary).
    Tensor picks = Tensor::empty({hidden.dim(0)}, DType::I32, hidden.device());
    m.project_vocab(hidden, hook, &picks);
    const Tensor ids = picks.to(Device::cpu());
    for (size_t b = 0; b < group.size(); ++b) group[b]->argmax = ids.data<int32_t>()[b];
    return;
  }
  Tensor device_logits = m.project_vocab(hidden, hook);
  Tensor logits = device_logits.to(Device::cpu());
  const int64_t V = logits.dim(1);
  for (size_t b = 0; b < group.size(); ++b)
    group[b]->logits.assign(logits.f32() + b * V, logits.f32() + (b + 1) * V);
}

}  // namespace lowrank::infer
