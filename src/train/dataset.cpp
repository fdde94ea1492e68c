#include "lowrank/train/dataset.h"

#include <numeric>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/core/rng.h"
#include "lowrank/io/files.h"
#include "lowrank/io/jsonl.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/sequences.h"

namespace lowrank::train {
namespace {

const TextEncoder& need_encoder(const DatasetOptions& o) {
  if (!o.encoder || !o.encoder->encode) throw error("text data needs a tokenizer (tokenizer.json in the model folder)");
  return *o.encoder;
}

std::string get_string(const nlohmann::json& rec, const char* key) {
  auto it = rec.find(key);
  if (it == rec.end() || !it->is_string()) throw error("\"", key, "\" must be a string");
  return it->get<std::string>();
}

Example parse_record(const nlohmann::json& rec, const DatasetOptions& o) {
  Example e;
  if (rec.contains("input_ids")) {
    e.ids = parse_input_ids(rec, o.vocab_size);
    if (auto it = rec.find("labels"); it != rec.end() && !it->is_null()) {
      if (!it->is_array() || it->size() != e.ids.size())
        throw error("\"labels\" must be an array as long as \"input_ids\" (", e.ids.size(), ")");
      for (const auto& v : *it) {
        if (!v.is_number_integer()) throw error("\"labels\" must hold integers");
        const int64_t l = v.get<int64_t>();
        if (l != -100 && (l < 0 || l >= o.vocab_size)) throw error("label ", l, " is outside the vocabulary");
        e.labels.push_back(static_cast<int32_t>(l));
      }
    } else {
      e.labels = e.ids;
    }
    // Exported HF datasets carry one; all ones is what lowrank trains on. A zero marks padding
    // that HF would hide from attention and lowrank would train on as text: refused, not ignored.
    if (auto it = rec.find("attention_mask"); it != rec.end() && !it->is_null()) {
      if (!it->is_array() || it->size() != e.ids.size())
        throw error("\"attention_mask\" must be an array as long as \"input_ids\" (", e.ids.size(), ")");
      for (const auto& v : *it)
        if (!(v.is_number_integer() && v.get<int64_t>() == 1))
          throw error("\"attention_mask\" holds ", v.dump(), ": padded examples are not supported; remove the padding "
                      "(lowrank pads its batches itself)");
    }
  } else if (rec.contains("text")) {
    e.ids = need_encoder(o).encode(get_string(rec, "text"), true);
    if (o.encoder->eos_id) e.ids.push_back(*o.encoder->eos_id);
    e.labels = e.ids;
  } else if (rec.contains("prompt") || rec.contains("completion")) {
    const auto& enc = need_encoder(o);
    std::vector<int32_t> prompt = enc.encode(get_string(rec, "prompt"), true);
    std::vector<int32_t> completion = enc.encode(get_string(rec, "completion"), false);
    if (enc.eos_id) completion.push_back(*enc.eos_id);
    e.ids = prompt;
    e.ids.insert(e.ids.end(), completion.begin(), completion.end());
    e.labels.assign(prompt.size(), -100);  // loss on the completion only
    e.labels.insert(e.labels.end(), completion.begin(), completion.end());
  } else if (rec.contains("messages")) {
    const auto& enc = need_encoder(o);
    if (!enc.encode_chat) throw error("chat data needs a chat template");
    if (!rec["messages"].is_array()) throw error("\"messages\" must be an array");
    e.ids = enc.encode_chat(rec["messages"], &e.labels);
  } else {
    throw error("expected one of \"input_ids\", \"text\", \"prompt\"/\"completion\" or \"messages\"");
  }
  return e;
}

}  // namespace

Dataset Dataset::load(const std::string& path, const DatasetOptions& o) {
  Dataset d;
  const bool txt = path.size() > 4 && path.compare(path.size() - 4, 4, ".txt") == 0;
  if (txt) {
    const auto& enc = need_encoder(o);
    std::vector<int32_t> all = enc.encode(io::read_file(path), false);
    for (size_t start = 0; start + 1 < all.size(); start += o.seq_len) {
      Example e;
      e.ids.assign(all.begin() + start, all.begin() + std::min(all.size(), start + o.seq_len));
      e.labels = e.ids;
      d.examples_.push_back(std::move(e));
    }
  } else if (o.pack) {
    Example all;
    io::for_each_jsonl(path, [&](int64_t, const nlohmann::json& rec) {
      const Example e = parse_record(rec, o);
      all.ids.insert(all.ids.end(), e.ids.begin(), e.ids.end());
      all.labels.insert(all.labels.end(), e.labels.begin(), e.labels.end());
    });
    for (size_t start = 0; start + 1 < all.ids.size(); start += o.seq_len) {  // a last block of one token predicts nothing
      const size_t end = std::min(all.ids.size(), start + static_cast<size_t>(o.seq_len));
      d.examples_.push_back({{all.ids.begin() + start, all.ids.begin() + end}, {all.labels.begin() + start, all.labels.begin() + end}});
    }
  } else {
    io::for_each_jsonl(path, [&](int64_t, const nlohmann::json& rec) {
      Example e = parse_record(rec, o);
      if (o.truncate && static_cast<int64_t>(e.ids.size()) > o.seq_len) {
        e.ids.resize(o.seq_len);
        e.labels.resize(o.seq_len);
        ++d.truncated_;
      }
      if (e.ids.size() >= 2) d.examples_.push_back(std::move(e));
    });
  }
  if (d.examples_.empty()) throw error(path, ": no examples (empty file, or every example shorter than 2 tokens)");
  if (d.truncated_ > 0)
    log_warn(path, ": ", d.truncated_, " examples longer than --seq-len ", o.seq_len, " were truncated");
  return d;
}

int64_t Dataset::total_tokens() const {
  int64_t n = 0;
  for (const auto& e : examples_) n += static_cast<int64_t>(e.ids.size());
  return n;
}

ExampleOrder::ExampleOrder(int64_t size, uint64_t seed, bool shuffle) : size_(size), seed_(seed), shuffle_(shuffle) {}

int64_t ExampleOrder::index(int64_t n) {
  const int64_t epoch = n / size_, pos = n % size_;
  if (!shuffle_) return pos;
  if (epoch != cached_epoch_) {
    order_.resize(size_);
    std::iota(order_.begin(), order_.end(), 0);
    Rng rng(seed_ ^ 0x5eed5eed5eedull, static_cast<uint64_t>(epoch) << 32);
    for (int64_t i = size_ - 1; i > 0; --i) std::swap(order_[i], order_[rng.below(i + 1)]);  // Fisher-Yates
    cached_epoch_ = epoch;
  }
  return order_[pos];
}

MicroBatch make_micro_batch(const Dataset& data, const std::vector<int64_t>& indices, int64_t multiple, int64_t cap) {
  LR_CHECK(multiple >= 1);
  MicroBatch mb;
  int64_t T = 0;
  for (int64_t i : indices) T = std::max<int64_t>(T, static_cast<int64_t>(data[i].ids.size()));
  const int64_t rounded = (T + multiple - 1) / multiple * multiple;
  T = std::max(T, cap > 0 ? std::min(rounded, cap) : rounded);
  const int64_t B = static_cast<int64_t>(indices.size());
  mb.tokens.batch = B;
  mb.tokens.seq = T;
  mb.tokens.ids.assign(B * T, 0);
  std::vector<int32_t> labels(B * T, -100);
  for (int64_t b = 0; b < B; ++b) {
    const Example& e = data[indices[b]];
    std::copy(e.ids.begin(), e.ids.end(), mb.tokens.ids.begin() + b * T);
    std::copy(e.labels.begin(), e.labels.end(), labels.begin() + b * T);
  }
  mb.targets = model::shift_labels(labels, B, T);
  for (int32_t t : mb.targets) mb.counted += t != -100;
  return mb;
}

}  // namespace lowrank::train
