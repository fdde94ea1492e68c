// Segmented LoRA (lora_rows_) on the GPU against the CPU reference: batches mixing adapters of
// different ranks (1 to the 1024 limit), rows without an adapter, an adapter's rows scattered
// through the batch, adapters that skip the projection, odd dimensions, more adapters than one
// launch takes (several launch pairs), f32 and bf16. lora_runs_ (runs of rows, cuBLAS's grouped
// GEMM) against the same per-row CPU reference, on batches whose rows come in runs.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>

#include "backend/cpu/cpu_ops.h"
#include "cuda/cuda_test_util.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {

struct RowsCase {
  int64_t n, in, out;
  std::vector<int64_t> ranks;  // 0: the adapter does not adapt this projection
};

// run_rows > 0: the rows come in runs of run_rows (the last shorter), each run one adapter or
// none, and the GPU takes them through lora_runs_; else the rows are scattered (lora_rows_).
void check(const RowsCase& c, DType t, uint64_t seed, int64_t run_rows = 0) {
  SCOPED_TRACE(testing::Message() << name(t) << " n=" << c.n << " in=" << c.in << " out=" << c.out
                                  << " adapters=" << c.ranks.size() << " runs of " << run_rows);
  ops::LoraRows cpu_t, gpu_t;
  for (size_t j = 0; j < c.ranks.size(); ++j) {
    const float scale = 0.25f + 0.5f * static_cast<float>(j % 5);
    cpu_t.scale.push_back(scale);
    gpu_t.scale.push_back(scale);
    if (c.ranks[j] == 0) {
      for (auto* tab : {&cpu_t, &gpu_t}) tab->a.emplace_back(), tab->b.emplace_back();
      continue;
    }
    // A and B scaled like trained LoRA (‖x Aᵀ‖ ~ ‖x‖, B small) so that y keeps its size.
    const Tensor a = rounded(random_cpu({c.ranks[j], c.in}, seed + 3 * j, 1.0f / std::sqrt(float(c.in))), t);
    const Tensor b = rounded(random_cpu({c.out, c.ranks[j]}, seed + 3 * j + 1, 1.0f / std::sqrt(float(c.ranks[j]))), t);
    cpu_t.a.push_back(a), cpu_t.b.push_back(b);
    gpu_t.a.push_back(to_gpu(a, t)), gpu_t.b.push_back(to_gpu(b, t));
  }
  // Rows cycle through the adapters and "none" with a stride, so an adapter's rows are scattered.
  std::vector<int32_t> rows(c.n);
  const auto choices = static_cast<int64_t>(c.ranks.size()) + 1;
  for (int64_t i = 0; i < c.n; ++i)
    rows[i] = static_cast<int32_t>(((run_rows > 0 ? i / run_rows : i) * 7 + seed) % choices) - 1;
  if (run_rows == 0) rows[0] = 0;  // at least one row has an adapter (else the relative error below is 0 / 0)
  std::vector<ops::LoraRun> runs;
  for (int64_t b = 0; run_rows > 0 && b < c.n; b += run_rows)
    if (rows[b] >= 0) runs.push_back({b, std::min(b + run_rows, c.n), rows[b]});
  cpu_t.rows = Tensor::from_ints(rows);
  gpu_t.rows = Tensor::from_ints(rows, gpu());
  const Tensor x = rounded(random_cpu({c.n, c.in}, seed + 1000), t);
  const Tensor y0 = rounded(random_cpu({c.n, c.out}, seed + 1001), t);
  Tensor y_ref = y0.clone();
  cpu::lora_rows_(y_ref, x, cpu_t);
  Tensor y = to_gpu(y0, t);
  if (run_rows > 0)
    ops::lora_runs_(y, to_gpu(x, t), gpu_t, runs);
  else
    ops::lora_rows_(y, to_gpu(x, t), gpu_t);
  // The LoRA term alone (y - y0) at the tolerance: the base rows would hide an error in it.
  Tensor delta = to_host(y), delta_ref = y_ref.clone();
  for (int64_t i = 0; i < delta.numel(); ++i) {
    delta.f32()[i] -= y0.f32()[i];
    delta_ref.f32()[i] -= y0.f32()[i];
  }
  // bf16: y is rounded once after the add, so the term carries the rounding of |y| (~|y0|).
  EXPECT_LE(rel_err_floor(delta, delta_ref, t == DType::BF16 ? frob(y0) : 0.0), tol_for(t));
  // Rows without an adapter (or whose adapter skips the projection) are untouched, bit for bit.
  const Tensor yh = to_host(y);
  for (int64_t i = 0; i < c.n; ++i) {
    if (rows[i] >= 0 && c.ranks[rows[i]] > 0) continue;
    for (int64_t o = 0; o < c.out; ++o) ASSERT_EQ(yh.f32()[i * c.out + o], y0.f32()[i * c.out + o]) << "row " << i;
  }
}

}  // namespace

TEST(CudaLoraRows, MixedRanksAndRowsWithoutAdapterEqualTheCpu) {
  LR_REQUIRE_GPU();
  const std::vector<RowsCase> cases = {
      {1, 64, 64, {16}},                             // one decode row
      {9, 37, 53, {8, 0, 3, 64}},                    // odd dims, a skipping adapter
      {33, 896, 4864, {16, 32, 8, 64, 1, 16, 16}},   // Qwen-0.5B up-projection shape
      {64, 4864, 896, {16, 8, 128}},                 // a down-projection, rank above 64
      {5, 200, 300, {1024, 2}},                      // the rank limit
      {300, 48, 40, std::vector<int64_t>(200, 4)},   // more adapters than one launch (128)
  };
  uint64_t seed = 1;
  for (const RowsCase& c : cases)
    for (DType t : {DType::F32, DType::BF16}) check(c, t, seed += 17);
}

TEST(CudaLoraRows, RunsOfMixedRanksEqualTheCpu) {
  LR_REQUIRE_GPU();
  const std::vector<std::pair<RowsCase, int64_t>> cases = {
      {{9, 37, 53, {8, 0, 3, 64}}, 1},                  // one-row runs, a skipping adapter, odd dims
      {{70, 896, 4864, {16, 32, 8, 1}}, 16},            // Qwen-0.5B up, the last run short
      {{384, 4864, 896, {16, 8, 128}}, 128},            // prompts of 128 tokens, a down-projection
      {{160, 48, 40, std::vector<int64_t>(40, 4)}, 4},  // 40 runs (every adapter), small shapes
      {{2300, 40, 24, {4, 8, 2}}, 2100},                // a long run (its own GEMM pair) and a short one
  };
  uint64_t seed = 5;
  for (const auto& [c, run_rows] : cases)
    for (DType t : {DType::F32, DType::BF16}) check(c, t, seed += 13, run_rows);
}

TEST(CudaLoraRows, EmptyTableChangesNothing) {
  LR_REQUIRE_GPU();
  Tensor y = to_gpu(random_cpu({4, 8}, 3), DType::BF16);
  const Tensor before = to_host(y);
  ops::LoraRows t{{Tensor()}, {Tensor()}, {1.0f}, Tensor::from_ints({0, 0, -1, 0}, gpu())};
  ops::lora_rows_(y, to_gpu(random_cpu({4, 5}, 4), DType::BF16), t);
  EXPECT_EQ(rel_err(y, before), 0.0);
}

#endif  // LOWRANK_WITH_CUDA
