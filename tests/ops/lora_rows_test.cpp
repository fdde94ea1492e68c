// The CPU reference of segmented LoRA (lora_rows_) against plain LoRA computed one row at a time
// with the GEMM ops (h = x Aᵀ, y += s · h Bᵀ), and its checks of the table; lora_runs_ (runs of
// rows) against lora_rows_ with the same rows, and its checks of the runs.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"
#include "random_tensor.h"

using namespace lowrank;
using test::random_tensor;

TEST(LoraRows, EachRowGetsItsOwnAdaptersLora) {
  const int64_t n = 7, in = 13, out = 9;
  const std::vector<int64_t> ranks = {4, 1, 8};
  ops::LoraRows t;
  for (size_t j = 0; j < ranks.size(); ++j) {
    t.a.push_back(random_tensor({ranks[j], in}, 10 + j));
    t.b.push_back(random_tensor({out, ranks[j]}, 20 + j));
    t.scale.push_back(0.5f + static_cast<float>(j));
  }
  t.a.emplace_back();  // adapter 3 does not adapt this projection
  t.b.emplace_back();
  t.scale.push_back(9.0f);
  const std::vector<int32_t> rows = {2, -1, 0, 3, 2, 1, 0};  // adapter 2's rows are not contiguous
  t.rows = Tensor::from_ints(rows);
  const Tensor x = random_tensor({n, in}, 1), y0 = random_tensor({n, out}, 2);
  Tensor y = y0.clone();
  ops::lora_rows_(y, x, t);
  for (int64_t i = 0; i < n; ++i) {
    Tensor want = y0.slice_rows(i, i + 1).clone();
    const int32_t j = rows[i];
    if (j >= 0 && t.a[j].defined()) {
      Tensor h;
      ops::matmul_nt(x.slice_rows(i, i + 1), t.a[j], h);
      ops::matmul_nt(h, t.b[j], want, t.scale[j], 1.0f);
    }
    for (int64_t o = 0; o < out; ++o)
      EXPECT_NEAR(y.f32()[i * out + o], want.f32()[o], 1e-5) << "row " << i << " column " << o;
  }
}

TEST(LoraRows, RejectsATableThatDoesNotFit) {
  const Tensor x = random_tensor({2, 4}, 1);
  Tensor y = random_tensor({2, 3}, 2);
  ops::LoraRows t{{random_tensor({2, 4}, 3)}, {random_tensor({3, 2}, 4)}, {1.0f}, Tensor::from_ints({0, 1})};
  EXPECT_THROW(ops::lora_rows_(y, x, t), Error) << "adapter 1 does not exist";
  const Tensor before = y.clone();
  t.rows = Tensor::from_ints({0, -1});
  t.b[0] = random_tensor({3, 3}, 5);  // rank 3 for an A of rank 2
  EXPECT_THROW(ops::lora_rows_(y, x, t), InternalError);
  t.b[0] = random_tensor({3, 2}, 5);
  t.rows = Tensor::from_ints({0});
  EXPECT_THROW(ops::lora_rows_(y, x, t), InternalError) << "one index per row";
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.f32()[i], before.f32()[i]) << "a rejected call changes nothing";
}

namespace {

// Three adapters (ranks 4, 1, 8) and a fourth that does not adapt the projection.
ops::LoraRows three_adapters(int64_t in, int64_t out) {
  ops::LoraRows t;
  for (int64_t j = 0; j < 3; ++j) {
    const int64_t r = std::vector<int64_t>{4, 1, 8}[j];
    t.a.push_back(random_tensor({r, in}, 30 + j));
    t.b.push_back(random_tensor({out, r}, 40 + j));
    t.scale.push_back(1.5f - static_cast<float>(j));
  }
  t.a.emplace_back(), t.b.emplace_back(), t.scale.push_back(2.0f);
  return t;
}

}  // namespace

TEST(LoraRuns, EqualsTheRowTableOfTheSameRows) {
  const int64_t n = 12, in = 10, out = 6;
  ops::LoraRows t = three_adapters(in, out);
  // Rows 0-2 adapter 2, 3 none, 4-5 adapter 0, 6-8 adapter 3 (skips), 9 adapter 1, 10-11 adapter 2.
  const std::vector<ops::LoraRun> runs = {{0, 3, 2}, {4, 6, 0}, {6, 9, 3}, {9, 10, 1}, {10, 12, 2}};
  t.rows = Tensor::from_ints({2, 2, 2, -1, 0, 0, 3, 3, 3, 1, 2, 2});
  const Tensor x = random_tensor({n, in}, 1), y0 = random_tensor({n, out}, 2);
  Tensor by_rows = y0.clone(), by_runs = y0.clone();
  ops::lora_rows_(by_rows, x, t);
  ops::lora_runs_(by_runs, x, t, runs);
  for (int64_t i = 0; i < by_rows.numel(); ++i) EXPECT_NEAR(by_runs.f32()[i], by_rows.f32()[i], 1e-5) << i;
  for (int64_t i : {3, 6, 7, 8})
    for (int64_t o = 0; o < out; ++o) EXPECT_EQ(by_runs.f32()[i * out + o], y0.f32()[i * out + o]) << "row " << i;
}

TEST(LoraRuns, RejectsRunsThatDoNotFit) {
  const Tensor x = random_tensor({6, 10}, 1);
  Tensor y = random_tensor({6, 6}, 2);
  const ops::LoraRows t = three_adapters(10, 6);
  const Tensor before = y.clone();
  const std::vector<std::vector<ops::LoraRun>> bad = {
      {{0, 7, 0}},             // past the last row
      {{2, 4, 0}, {3, 5, 1}},  // overlapping
      {{3, 4, 0}, {0, 2, 1}},  // out of order
      {{1, 1, 0}},             // empty
      {{0, 2, 4}},             // adapter 4 of 4
      {{0, 2, -1}},
  };
  for (const auto& runs : bad) EXPECT_THROW(ops::lora_runs_(y, x, t, runs), InternalError);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.f32()[i], before.f32()[i]) << "a rejected call changes nothing";
}
