// The paged KV cache ops on the GPU against the CPU reference: writes bit for bit; decode
// attention over shuffled blocks for batches of odd lengths (1 to 3000: one split and split-K),
// GQA groups of 1 to 32 (above 16 a group spans several blocks), MQA, head dims 64/80/128/256,
// sliding windows, soft-capping, f32 and bf16.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {

struct PagedCase {
  std::vector<int> lens;
  int64_t H, KV, hd, window = 0;
  float softcap = 0;
};

void check(const PagedCase& c, DType t, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << name(t) << " B=" << c.lens.size() << " H=" << c.H << " KV=" << c.KV
                                  << " hd=" << c.hd << " window=" << c.window << " softcap=" << c.softcap);
  const int64_t bs = 16, B = static_cast<int64_t>(c.lens.size());
  int64_t blocks = 2, max_len = 0;  // two spare blocks
  for (int len : c.lens) {
    blocks += (len + bs - 1) / bs;
    max_len = std::max<int64_t>(max_len, len);
  }
  // Blocks in shuffled order: a table that were read as contiguous memory would fail.
  std::vector<int32_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(seed)));
  const int64_t width = (max_len + bs - 1) / bs + 1;  // one column more than needed: never read
  std::vector<int32_t> tables(B * width, 0);
  size_t next = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < (c.lens[b] + bs - 1) / bs; ++i) tables[b * width + i] = order[next++];
  // Fill the pools through the write op (every row of every sequence), on both devices.
  int64_t rows = 0;
  for (int len : c.lens) rows += len;
  std::vector<int32_t> slots;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < c.lens[b]; ++p) slots.push_back(tables[b * width + p / bs] * bs + p % bs);
  Tensor k = rounded(random_cpu({rows, c.KV * c.hd}, seed, 2.0f), t), v = rounded(random_cpu({rows, c.KV * c.hd}, seed + 1), t);
  Tensor q = rounded(random_cpu({B, c.H * c.hd}, seed + 2, 2.0f), t);
  Tensor k_pool = Tensor::zeros({blocks * bs, c.KV * c.hd}), v_pool = Tensor::zeros({blocks * bs, c.KV * c.hd});
  cpu::paged_kv_write_(k_pool, v_pool, k, v, Tensor::from_ints(slots));
  Tensor k_pool_d = Tensor::zeros({blocks * bs, c.KV * c.hd}, t, gpu()), v_pool_d = Tensor::zeros_like(k_pool_d);
  ops::paged_kv_write_(k_pool_d, v_pool_d, to_gpu(k, t), to_gpu(v, t), Tensor::from_ints(slots, gpu()));
  EXPECT_EQ(rel_err(k_pool_d, k_pool), 0.0) << "the write is a copy";
  EXPECT_EQ(rel_err(v_pool_d, v_pool), 0.0) << "the write is a copy";

  const ops::AttentionShape s{1, 1, c.H, c.KV, c.hd, c.window, 1.0f / std::sqrt(static_cast<float>(c.hd)), c.softcap};
  std::vector<int32_t> lens(c.lens.begin(), c.lens.end());
  Tensor ref = cpu::paged_attention(q, k_pool, v_pool, Tensor::from_ints(tables).reshape({B, width}),
                                    Tensor::from_ints(lens), bs, max_len, s);
  Tensor got = ops::paged_attention(to_gpu(q, t), k_pool_d, v_pool_d,
                                    Tensor::from_ints(tables, gpu()).reshape({B, width}), Tensor::from_ints(lens, gpu()),
                                    bs, max_len, s);
  EXPECT_EQ(got.dtype(), t);
  EXPECT_LE(rel_err(got, ref), tol_for(t));
  // Each sequence on its own too: no row of the batch may depend on the others.
  for (int64_t b = 0; b < B; ++b) {
    Tensor one = ops::paged_attention(to_gpu(q.slice_rows(b, b + 1), t), k_pool_d, v_pool_d,
                                      Tensor::from_ints(std::vector<int32_t>(tables.begin() + b * width, tables.begin() + (b + 1) * width), gpu())
                                          .reshape({1, width}),
                                      Tensor::from_ints({lens[b]}, gpu()), bs, lens[b], s);
    EXPECT_LE(rel_err(one, ref.slice_rows(b, b + 1)), tol_for(t)) << "sequence " << b << " alone";
  }
}

}  // namespace

TEST(CudaPagedAttention, EqualsCpuReference) {
  LR_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType t : {DType::F32, DType::BF16}) {
    check({{1, 7, 16, 17, 33, 100}, 8, 2, 64}, t, seed += 10);             // GQA 4, odd lengths
    check({{5, 130, 77}, 14, 2, 64}, t, seed += 10);                       // Qwen2.5-0.5B's heads (group 7)
    check({{3, 64, 200, 31}, 32, 8, 128}, t, seed += 10);                  // Llama-3-8B's heads
    check({{9, 40}, 32, 1, 64}, t, seed += 10);                            // group 32: two blocks per group
    check({{12, 45, 2}, 6, 6, 80}, t, seed += 10);                         // MHA, head_dim 80
    check({{50, 8, 300}, 4, 2, 256}, t, seed += 10);                       // head_dim 256 (Gemma)
    check({{100, 20, 301}, 8, 4, 64, 32}, t, seed += 10);                  // sliding window 32
    check({{60, 3}, 8, 4, 128, 0, 5.0f}, t, seed += 10);                   // soft-capping
    check({{3000}, 8, 2, 128}, t, seed += 10);                             // one long sequence: split-K
    check({{2500, 1, 700}, 16, 8, 64, 1000}, t, seed += 10);               // split-K with a window
  }
}

TEST(CudaPagedAttention, ManySequences) {
  LR_REQUIRE_GPU();
  std::vector<int> lens;
  for (int i = 0; i < 64; ++i) lens.push_back(1 + (i * 37) % 211);
  check({lens, 14, 2, 64}, DType::BF16, 99);
}

// Greedy decoding's argmax on the device: the CPU's pick (the first maximum) exactly, with ties
// placed across threads' strides and at both ends of a row.
TEST(CudaArgmaxRows, EqualsCpuIncludingTies) {
  LR_REQUIRE_GPU();
  for (int64_t V : {1, 7, 300, 151936}) {
    Tensor x = random_cpu({6, V}, static_cast<uint64_t>(V));
    auto set = [&](int64_t r, int64_t i, float v) { if (i < V) x.f32()[r * V + i] = v; };
    set(1, V - 1, 5.0f);                   // the last element
    set(2, 0, 5.0f);                       // the first element
    set(3, V / 2, 5.0f), set(3, V / 3, 5.0f), set(3, V - 1, 5.0f);  // ties: the lowest index wins
    set(4, 1, 5.0f), set(4, 257, 5.0f);    // a tie between two threads' strides
    const Tensor got = ops::argmax_rows(x.to(gpu())).to(Device::cpu()), want = cpu::argmax_rows(x);
    EXPECT_EQ(std::vector<int32_t>(got.data<int32_t>(), got.data<int32_t>() + got.numel()),
              std::vector<int32_t>(want.data<int32_t>(), want.data<int32_t>() + want.numel()))
        << "V=" << V;
  }
}

// One row's lm_head and pick in one launch: its logits are cuBLASLt's within f32 summation order
// and the same bits on every call; its pick is argmax_rows of those logits, the first of tied
// rows (weight rows equal to x itself: the largest dots, planted at the ends and across blocks).
TEST(CudaProjectArgmax, PicksTheFirstMaximumOfItsOwnLogits) {
  LR_REQUIRE_GPU();
  for (const auto& [V, K] : std::vector<std::pair<int64_t, int64_t>>{{1, 8}, {7, 64}, {333, 200}, {151936, 896}, {4099, 4096}}) {
    SCOPED_TRACE(testing::Message() << "V=" << V << " K=" << K);
    const Tensor x = random_cpu({1, K}, static_cast<uint64_t>(V)).to(DType::BF16);
    Tensor w = random_cpu({V, K}, static_cast<uint64_t>(V + 1)).to(DType::BF16);
    for (const std::vector<int64_t>& tied : std::vector<std::vector<int64_t>>{{V - 1}, {0, V - 1}, {V / 2, V / 3, V - 1}}) {
      Tensor wt = w.clone();
      for (int64_t r : tied)
        std::copy_n(x.data<uint16_t>(), K, wt.data<uint16_t>() + r * K);
      const Tensor xg = x.to(gpu()), wg = wt.to(gpu());
      Tensor ids = Tensor::empty({1}, DType::I32, gpu());
      const Tensor y = ops::project_argmax(xg, wg, ids).to(Device::cpu());
      Tensor again_ids = Tensor::empty({1}, DType::I32, gpu());
      const Tensor again = ops::project_argmax(xg, wg, again_ids).to(Device::cpu());
      ASSERT_EQ(std::memcmp(y.raw(), again.raw(), y.numel() * sizeof(float)), 0);
      Tensor ref = Tensor::empty({1, V}, DType::F32, gpu());
      ops::matmul_nt(xg, wg, ref);
      const Tensor r = ref.to(Device::cpu());
      for (int64_t i = 0; i < V; ++i) ASSERT_NEAR(y.f32()[i], r.f32()[i], 1e-4 * (1 + std::fabs(r.f32()[i]))) << i;
      const int32_t want = cpu::argmax_rows(y).data<int32_t>()[0];
      EXPECT_EQ(want, *std::min_element(tied.begin(), tied.end()));
      EXPECT_EQ(ids.to(Device::cpu()).data<int32_t>()[0], want);
      EXPECT_EQ(again_ids.to(Device::cpu()).data<int32_t>()[0], want);
    }
  }
}
#endif
