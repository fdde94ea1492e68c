#include "decode_graphs.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/log.h"
#include "lowrank/ops/ops.h"
#include "paged_attention_cache.h"

namespace lowrank::infer {
namespace {

int64_t next_power_of_two(int64_t n, int64_t at_least) {
  int64_t p = at_least;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

bool DecodeGraphs::usable(const model::Model& model) {
  const char* env = std::getenv("LOWRANK_CUDA_GRAPHS");
  if (env && std::strcmp(env, "0") == 0) return false;
  return DeviceGraph::supported(model.device()) &&
         !model.rope_changes(0, std::max<int64_t>(model.config().max_position_embeddings, 1));
}

DecodeGraphs::DecodeGraphs(const model::Model& model, PagedKVCache& cache)
    : model_(model), cache_(cache), pool_(make_device_graph_pool(model.device())) {}

void DecodeGraphs::forward(Bucket& b, int k, const std::vector<lora::RowAdapter>& set) {
  const int64_t B = b.batch;
  const Tensor& in = b.sides[k].inputs;
  Tensor ids = in.slice_rows(0, B), pos = in.slice_rows(B, 2 * B);
  Tensor slots = in.slice_rows(2 * B, 3 * B), lens = in.slice_rows(3 * B, 4 * B);
  Tensor rows = in.slice_rows(4 * B, 5 * B);
  Tensor tables = in.slice_rows(5 * B, B * (5 + b.width)).reshape({B, b.width});
  PagedAttentionCache attention(cache_, slots, tables, lens, b.length);
  // Built for this pass only: a recorded graph keeps the adapters' pointers, not the hook.
  const std::unique_ptr<lora::MixedBatchHook> hook = set.empty() ? nullptr : std::make_unique<lora::MixedBatchHook>(set, rows);
  Tensor h = model_.hidden_states_at(ids, pos, B, 1, b.length - 1, hook.get(), attention);
  // The argmax is written into the other side's ids: those of a step started ahead there (a
  // host-fed step overwrites them).
  Tensor argmax = b.argmax(k);
  b.sides[k].logits = model_.project_vocab(h, hook.get(), &argmax);
}

bool DecodeGraphs::record(Bucket& b, int k, const std::vector<lora::RowAdapter>& set) {
  try {
    auto graph = std::make_unique<DeviceGraph>(model_.device(), pool_);
    graph->record([&] { forward(b, k, set); });
    b.sides[k].graph = std::move(graph);
    return true;
  } catch (const Error& e) {
    log_warn("decode step of ", b.batch, " rows runs without a CUDA graph: ", e.what());
    b.eager = true;
    return false;
  }
}

void DecodeGraphs::run_side(Bucket& b, int k, const std::vector<lora::RowAdapter>& set) {
  // A read of this side's last argmax may still be in flight beside the stream: the step writes there.
  if (readbacks_[k]) readbacks_[k]->device_waits();
  Side& side = b.sides[k];
  if (side.graph) {
    side.graph->replay();
    ++replays_;
  } else {
    forward(b, k, set);
  }
  side.done->record();
}

bool DecodeGraphs::same_adapters(const Bucket& b, const std::vector<lora::RowAdapter>& set) {
  if (b.adapters.size() != set.size()) return false;
  for (size_t j = 0; j < set.size(); ++j)  // owner equality: a weak reference keeps its control block
    if (b.adapters[j].expired() || b.adapters[j].owner_before(set[j].adapter) || set[j].adapter.owner_before(b.adapters[j]))
      return false;
  return true;
}

void DecodeGraphs::evict_adapter_buckets(const Key& keep) {
  for (;;) {
    size_t with_adapters = 0;
    auto oldest = buckets_.end();
    for (auto it = buckets_.begin(); it != buckets_.end(); ++it) {
      if (std::get<2>(it->first).empty()) continue;
      ++with_adapters;
      if (it->first != keep && (oldest == buckets_.end() || it->second.last_used < oldest->second.last_used)) oldest = it;
    }
    if (with_adapters <= kMaxAdapterBuckets || oldest == buckets_.end()) return;
    settle_copies();
    buckets_.erase(oldest);
  }
}

std::vector<int32_t> DecodeGraphs::inputs_of(const Bucket& b, const Step& s, const std::vector<int32_t>& row_adapter) {
  // Padding rows: token 0 at position 0, written nowhere (slot -1), attending to one position of
  // block 0 (any block: the row's output is ignored), no adapter.
  const int64_t batch = b.batch, n = static_cast<int64_t>(s.pos.size());
  std::vector<int32_t> host(batch * (5 + b.width), 0);
  std::copy(s.ids.begin(), s.ids.end(), host.begin());
  std::copy(s.pos.begin(), s.pos.end(), host.begin() + batch);
  std::fill(host.begin() + 2 * batch, host.begin() + 3 * batch, -1);
  std::copy(s.slots.begin(), s.slots.end(), host.begin() + 2 * batch);
  std::fill(host.begin() + 3 * batch, host.begin() + 4 * batch, 1);
  std::copy(s.lens.begin(), s.lens.end(), host.begin() + 3 * batch);
  std::copy(row_adapter.begin(), row_adapter.end(), host.begin() + 4 * batch);
  for (int64_t r = 0; r < n; ++r)
    std::copy(s.tables.begin() + r * s.width, s.tables.begin() + r * s.width + std::min(s.width, b.width),
              host.begin() + 5 * batch + r * b.width);
  return host;
}

bool DecodeGraphs::same_rows(const Step& a, const Step& b) {
  if (a.pos.size() != b.pos.size() || a.adapters.size() != b.adapters.size()) return false;
  for (size_t r = 0; r < a.adapters.size(); ++r)
    if (a.adapters[r].adapter != b.adapters[r].adapter || a.adapters[r].user_scale != b.adapters[r].user_scale)
      return false;
  return true;
}

bool DecodeGraphs::same_step(const Step& a, const Step& b) {
  return same_rows(a, b) && a.ids == b.ids && a.pos == b.pos && a.slots == b.slots && a.lens == b.lens &&
         a.tables == b.tables && a.width == b.width && a.max_len == b.max_len;
}

bool DecodeGraphs::fits_ahead(const Step& s, const Step* next, int64_t length) const {
  const int64_t positions = std::max<int64_t>(model_.config().max_position_embeddings, 1);
  return next && same_rows(s, *next) && next->max_len <= positions &&
         std::min(next_power_of_two(next->max_len, kMinLength), positions) == length;
}

namespace {

// LOWRANK_DECODE_BESIDE=0: the copies of steps started ahead on the device's stream, between two
// steps (for A/B timing).
bool copies_beside() {
  static const bool on = [] {
    const char* v = std::getenv("LOWRANK_DECODE_BESIDE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

}  // namespace

void DecodeGraphs::start_ahead(Bucket& b, const Key& key, const Step& next, const std::vector<int32_t>& row_adapter,
                               int k) {
  const std::vector<int32_t> host = inputs_of(b, next, row_adapter);
  const size_t skip = static_cast<size_t>(b.batch);  // the ids: the argmax the other side left there
  const size_t bytes = (host.size() - skip) * sizeof(int32_t);
  std::unique_ptr<HostStaging>& up = uploads_[k];
  if (!up || up->capacity() < bytes) up = std::make_unique<HostStaging>(model_.device(), bytes);
  up->wait();  // its last upload (two steps back) has run
  std::memcpy(up->data(), host.data() + skip, bytes);
  Side& side = b.sides[k];
  LR_CHECK(side.graph, "decode step started ahead on a side without a graph");
  int32_t* dst = static_cast<int32_t*>(side.inputs.raw()) + skip;
  if (copies_beside()) up->upload_beside(dst, bytes, *side.done);  // once this side's last step has run
  else up->upload(dst, bytes);
  run_side(b, k, {});
  queue_read(b, k, static_cast<int64_t>(next.pos.size()));
  ahead_.active = true;
  ahead_.key = key;
  ahead_.step = next;
  ahead_.row_adapter = row_adapter;
  ahead_.side = k;
}

HostStaging& DecodeGraphs::readback(int k) {
  if (!readbacks_[k]) readbacks_[k] = std::make_unique<HostStaging>(model_.device(), kMaxBatch * sizeof(int32_t));
  return *readbacks_[k];
}

void DecodeGraphs::queue_read(Bucket& b, int k, int64_t n) {
  const void* src = b.argmax(k).raw();
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (copies_beside()) readback(k).download_beside(src, bytes, *b.sides[k].done);
  else readback(k).download(src, bytes);
}

void DecodeGraphs::read_argmax(int k, int64_t n, std::vector<int32_t>& argmax) {
  HostStaging& r = readback(k);
  r.wait();
  const auto* ids = static_cast<const int32_t*>(r.data());
  argmax.assign(ids, ids + n);
}

void DecodeGraphs::settle_copies() {
  for (auto* stagings : {&readbacks_, &uploads_})
    for (auto& s : *stagings)
      if (s) s->wait();
}

bool DecodeGraphs::run(const Step& s, bool argmax_only, std::vector<int32_t>& argmax, std::vector<float>& logits,
                       const Step* next) {
  const auto n = static_cast<int64_t>(s.ids.size());
  const int64_t positions = std::max<int64_t>(model_.config().max_position_embeddings, 1);
  if (ahead_.active) {
    ahead_.active = false;
    if (argmax_only && same_step(ahead_.step, s)) {  // already running: start the one after, then read
      Bucket& b = buckets_.at(ahead_.key);
      b.last_used = ++steps_;
      const int k = ahead_.side;
      const Key key = ahead_.key;
      const std::vector<int32_t> row_adapter = ahead_.row_adapter;
      if (fits_ahead(s, next, b.length)) start_ahead(b, key, *next, row_adapter, 1 - k);
      read_argmax(k, n, argmax);
      if (ahead_.active) ahead_.step.ids = argmax;
      return true;
    }
    // Not asked for: it runs anyway and nothing reads it (a later read of its side lands after
    // its own: one copy stream a readback).
  }
  if (n == 0 || n > kMaxBatch || s.max_len > positions) return false;
  LR_CHECK(s.adapters.empty() || static_cast<int64_t>(s.adapters.size()) == n, "decode step: ", s.adapters.size(),
           " row adapters for ", n, " rows");
  const int64_t batch = next_power_of_two(n, 1);
  const int64_t length = std::min(next_power_of_two(s.max_len, kMinLength), positions);
  // The step's distinct (adapter, scale), sorted: the bucket's set; each row's index into it.
  std::map<std::pair<const lora::MixableAdapter*, double>, int32_t> index;
  for (const lora::RowAdapter& a : s.adapters)
    if (a.adapter) index.try_emplace({a.adapter.get(), a.user_scale}, 0);
  AdapterSet key_set;
  std::vector<lora::RowAdapter> set;
  for (auto& [k, j] : index) {
    j = static_cast<int32_t>(key_set.size());
    key_set.push_back(k);
    set.push_back({});
  }
  std::vector<int32_t> row_adapter(batch, -1);
  for (int64_t r = 0; r < static_cast<int64_t>(s.adapters.size()); ++r) {
    const lora::RowAdapter& a = s.adapters[r];
    if (!a.adapter) continue;
    const int32_t j = index.at({a.adapter.get(), a.user_scale});
    row_adapter[r] = j;
    set[j] = a;
  }
  const Key key{batch, length, key_set};
  if (auto it = buckets_.find(key); it != buckets_.end() && !same_adapters(it->second, set)) {
    settle_copies();
    buckets_.erase(it);  // other adapters now live at the recorded addresses
  }
  Bucket& b = buckets_[key];
  b.last_used = ++steps_;
  if (!b.sides[0].inputs.defined()) {
    b.batch = batch;
    b.length = length;
    b.width = cache_.blocks_for(length);
    for (Side& side : b.sides) {
      side.inputs = Tensor::empty({batch * (5 + b.width)}, DType::I32, model_.device());
      side.done = std::make_unique<DeviceEvent>(model_.device());
    }
    for (const lora::RowAdapter& a : set) b.adapters.push_back(a.adapter);
    if (!set.empty()) evict_adapter_buckets(key);
  }
  // Host-fed steps run on side 0 (every upload beside the stream was ordered before what the
  // stream runs next, so this copy lands after them).
  const std::vector<int32_t> host = inputs_of(b, s, row_adapter);
  device_copy(b.sides[0].inputs.raw(), model_.device(), host.data(), Device::cpu(), host.size() * sizeof(int32_t));
  if (b.warmed && !b.sides[0].graph && !b.eager) record(b, 0, set);
  run_side(b, 0, set);
  b.warmed = true;
  // The next step ahead: a greedy step of the same rows in the same bucket, on side 1's graph.
  if (argmax_only && b.sides[0].graph && fits_ahead(s, next, length) &&
      (b.sides[1].graph || (!b.eager && record(b, 1, set)))) {
    queue_read(b, 0, n);
    start_ahead(b, key, *next, row_adapter, 1);
    read_argmax(0, n, argmax);
    ahead_.step.ids = argmax;
    return true;
  }
  const Tensor ids = b.argmax(0).slice_rows(0, n).to(Device::cpu());
  argmax.assign(ids.data<int32_t>(), ids.data<int32_t>() + n);
  if (!argmax_only) {
    const Tensor l = b.sides[0].logits.slice_rows(0, n).to(Device::cpu());
    logits.assign(l.f32(), l.f32() + l.numel());
  }
  return true;
}

void DecodeGraphs::forward_prefill(PrefillBucket& b) {
  const int64_t R = b.rows;
  const Tensor ids = b.inputs.slice_rows(0, R), pos = b.inputs.slice_rows(R, 2 * R);
  PagedAttentionCache attention(cache_, b.inputs.slice_rows(2 * R, 3 * R));
  const Tensor h = model_.hidden_states_at(ids, pos, 1, R, R - 1, nullptr, attention);
  b.logits = model_.project_vocab(ops::embedding(h, b.inputs.slice_rows(3 * R, 3 * R + 1)), nullptr, &b.pick);
}

bool DecodeGraphs::prefill(const std::vector<int32_t>& ids, const std::vector<int32_t>& slots, bool argmax_only,
                           int32_t& argmax, std::vector<float>& logits) {
  static const bool enabled = [] {  // LOWRANK_PREFILL_GRAPHS=0: prompts run op by op (A/B timing)
    const char* v = std::getenv("LOWRANK_PREFILL_GRAPHS");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t rows = next_power_of_two(n, kMinPrefillRows);
  if (!enabled || n == 0 || rows > kMaxPrefillRows || rows > model_.config().max_position_embeddings ||
      static_cast<int64_t>(slots.size()) != n)
    return false;
  PrefillBucket& b = prefills_[rows];
  if (!b.inputs.defined()) {
    b.rows = rows;
    b.inputs = Tensor::empty({3 * rows + 1}, DType::I32, model_.device());
    b.pick = Tensor::empty({1}, DType::I32, model_.device());
  }
  std::vector<int32_t> host(3 * rows + 1, 0);  // padding rows: token 0, their own positions, slot -1
  std::copy(ids.begin(), ids.end(), host.begin());
  for (int64_t t = 0; t < rows; ++t) host[rows + t] = static_cast<int32_t>(t);
  std::fill(host.begin() + 2 * rows, host.begin() + 3 * rows, -1);
  std::copy(slots.begin(), slots.end(), host.begin() + 2 * rows);
  host[3 * rows] = static_cast<int32_t>(n - 1);
  device_copy(b.inputs.raw(), model_.device(), host.data(), Device::cpu(), host.size() * sizeof(int32_t));
  if (b.warmed && !b.graph && !b.eager) {
    try {
      auto graph = std::make_unique<DeviceGraph>(model_.device(), pool_);
      graph->record([&] { forward_prefill(b); });
      b.graph = std::move(graph);
    } catch (const Error& e) {
      log_warn("prefill of ", rows, " rows runs without a CUDA graph: ", e.what());
      b.eager = true;
    }
  }
  if (b.graph) {
    b.graph->replay();
    ++replays_;
  } else {
    forward_prefill(b);
    b.warmed = true;
  }
  argmax = b.pick.to(Device::cpu()).data<int32_t>()[0];
  if (!argmax_only) {
    const Tensor l = b.logits.to(Device::cpu());
    logits.assign(l.f32(), l.f32() + l.numel());
  }
  return true;
}

}  // namespace lowrank::infer
