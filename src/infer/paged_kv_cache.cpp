#include "lowrank/infer/paged_kv_cache.h"

#include <algorithm>

#include "lowrank/core/error.h"

namespace lowrank::infer {

PagedKVCache::PagedKVCache(const model::ModelConfig& c, Device device, DType dtype, int64_t num_blocks,
                           int64_t block_size)
    : block_size_(block_size), num_blocks_(num_blocks) {
  LR_CHECK(block_size > 0 && num_blocks > 0 && num_blocks * block_size < (int64_t(1) << 31),
           "paged KV cache of ", num_blocks, " blocks of ", block_size);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    k_.push_back(Tensor::empty({num_blocks * block_size, c.kv_dim()}, dtype, device));
    v_.push_back(Tensor::empty({num_blocks * block_size, c.kv_dim()}, dtype, device));
  }
  free_.resize(num_blocks);
  // Lowest ids last, so they are handed out first (tidy tables in tests; no other meaning).
  for (int64_t i = 0; i < num_blocks; ++i) free_[i] = static_cast<int32_t>(num_blocks - 1 - i);
}

int64_t PagedKVCache::block_bytes(const model::ModelConfig& c, DType dtype, int64_t block_size) {
  return 2 * c.num_layers * block_size * c.kv_dim() * static_cast<int64_t>(dtype_size(dtype));
}

std::vector<int32_t> PagedKVCache::allocate(int64_t positions) {
  const int64_t n = blocks_for(positions);
  if (n > free_blocks())
    throw error("the KV cache is full: ", positions, " positions need ", n, " blocks of ", block_size_, ", ",
                free_blocks(), " of ", num_blocks_, " are free");
  std::vector<int32_t> blocks(free_.end() - n, free_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_.resize(free_.size() - n);
  return blocks;
}

void PagedKVCache::release(std::vector<int32_t>& blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free_.push_back(*it);
  blocks.clear();
}

}  // namespace lowrank::infer
