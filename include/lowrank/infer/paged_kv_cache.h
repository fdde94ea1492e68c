#pragma once
// A paged KV cache (vLLM's PagedAttention layout): every layer's keys and values live in one pool of
// fixed-size blocks shared by all sequences, and a sequence owns a list of blocks (its block
// table), so sequences of any length share the memory without fragmenting it. The pools hold the
// model's activation dtype (bf16 on CUDA, f32 on the CPU); ops::paged_kv_write_ fills them and
// ops::paged_attention reads them.
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"

namespace lowrank::infer {

class PagedKVCache {
 public:
  static constexpr int64_t kDefaultBlockSize = 16;  // positions per block

  PagedKVCache(const model::ModelConfig& config, Device device, DType dtype, int64_t num_blocks,
               int64_t block_size = kDefaultBlockSize);
  // Bytes of one block over all layers, keys and values (for sizing a pool).
  static int64_t block_bytes(const model::ModelConfig& config, DType dtype, int64_t block_size = kDefaultBlockSize);

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t blocks_for(int64_t positions) const { return (positions + block_size_ - 1) / block_size_; }

  // Blocks for `positions` positions; Error (naming the numbers) when fewer are free.
  std::vector<int32_t> allocate(int64_t positions);
  // Returns blocks to the pool (and clears the list).
  void release(std::vector<int32_t>& blocks);

  Tensor& k(int layer) { return k_[layer]; }  // [num_blocks * block_size, KV*hd]
  Tensor& v(int layer) { return v_[layer]; }  // [num_blocks * block_size, KV*hd]

 private:
  int64_t block_size_, num_blocks_;
  std::vector<Tensor> k_, v_;    // per layer
  std::vector<int32_t> free_;    // free block ids, taken from the back
};

}  // namespace lowrank::infer
