#pragma once
// Training data: examples (token ids with aligned labels, -100 = no loss), shuffled per epoch with
// a seed, and cut into padded micro-batches.
#include <functional>
#include <string>
#include <vector>

#include "lowrank/model/model.h"

namespace lowrank::train {

struct Example {
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;  // same length as ids; -100 where no loss is taken
};

// Turns text into ids; provided by the tokenizer layer (null: only input_ids data is accepted).
struct TextEncoder {
  std::function<std::vector<int32_t>(const std::string&, bool add_special)> encode;
  std::function<std::vector<int32_t>(const nlohmann::json& messages, std::vector<int32_t>* labels)> encode_chat;
  std::optional<int32_t> eos_id;
};

struct DatasetOptions {
  int64_t seq_len = 512;       // longer examples are truncated (counted and reported); .txt block size
  int64_t vocab_size = 0;      // ids are checked against it
  const TextEncoder* encoder = nullptr;
  bool truncate = true;        // false: keep whole examples (evaluation scores them in windows)
  // TRL's packing="wrapped": a .jsonl file's examples (ids and labels, each with its eos) joined in
  // file order and cut into seq_len blocks, so no step pads; masked labels stay masked.
  bool pack = false;
};

class Dataset {
 public:
  // Reads a .jsonl file ({"input_ids", "labels"?} | {"text"} | {"prompt", "completion"} |
  // {"messages"}) or a .txt file (tokenized and packed into seq_len blocks).
  static Dataset load(const std::string& path, const DatasetOptions& options);
  static Dataset from_examples(std::vector<Example> examples) {
    Dataset d;
    d.examples_ = std::move(examples);
    return d;
  }

  int64_t size() const { return static_cast<int64_t>(examples_.size()); }
  const Example& operator[](int64_t i) const { return examples_[i]; }
  int64_t truncated() const { return truncated_; }
  int64_t total_tokens() const;

 private:
  std::vector<Example> examples_;
  int64_t truncated_ = 0;
};

// A micro-batch: B rows right-padded (pad id 0, label -100) to the longest, plus its targets. The
// padded length is rounded up to a multiple of `multiple`, but not past `cap` (0: none) unless the
// longest is longer. Padding after a causal sequence changes none of its positions' outputs.
struct MicroBatch {
  model::TokenBatch tokens;
  std::vector<int32_t> targets;  // shifted labels, [B*T]
  int64_t counted = 0;           // targets that are not -100
};

// The order of examples: a fresh permutation per epoch from (seed, epoch), so any position of a
// run can be recomputed on resume without saving the order.
class ExampleOrder {
 public:
  ExampleOrder(int64_t dataset_size, uint64_t seed, bool shuffle = true);
  // Index of the n-th example drawn since the start of training (epochs follow each other).
  int64_t index(int64_t n);

 private:
  int64_t size_;
  uint64_t seed_;
  bool shuffle_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> order_;
};

MicroBatch make_micro_batch(const Dataset& data, const std::vector<int64_t>& indices, int64_t multiple = 1,
                            int64_t cap = 0);

}  // namespace lowrank::train
