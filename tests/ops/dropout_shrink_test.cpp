// ops::dropout_shrink and dropout_shrink_backward (LoRA's shrink through its dropout, fused on the
// CPU) against the composition they replace: dropout, then the GEMMs, then dropout's backward on
// g A. Same masks (the zeros of dx sit exactly where the mask drops), values within f32 rounding
// (the fused GEMMs sum block by block). Shapes: one block; many blocks with a partial last one and
// the parallel loop; rows wider than a block; draw offsets off a Philox block.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "lowrank/ops/ops.h"
#include "random_tensor.h"

using namespace lowrank;
using test::random_tensor;

namespace {

double rel_err(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(got.numel(), ref.numel());
  double num = 0, den = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double d = static_cast<double>(got.f32()[i]) - ref.f32()[i];
    num += d * d;
    den += static_cast<double>(ref.f32()[i]) * ref.f32()[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.f32(), b.f32(), a.numel() * sizeof(float)) == 0;
}

struct Case {
  int64_t n, in, r;
  uint64_t offset;
};
// 16 384 elements a CPU block: [3, 5] is one block; [1000, 97] six (168 rows each, the last 160)
// over threads; [5, 20000] a row a block.
const Case kCases[] = {{3, 5, 2, 11}, {1000, 97, 16, 1001}, {5, 20000, 3, 6}};
constexpr double kTol = 1e-6;  // f32 rounding of the GEMMs' sums in another order

}  // namespace

TEST(DropoutShrink, ForwardEqualsDropoutThenGemm) {
  for (const Case& c : kCases) {
    SCOPED_TRACE("x [" + std::to_string(c.n) + ", " + std::to_string(c.in) + "]");
    const Tensor x = random_tensor({c.n, c.in}, 1), A = random_tensor({c.r, c.in}, 2);
    const ops::DropoutDraws d{0.25, 7, c.offset, Tensor()};
    Tensor h, want;
    ops::dropout_shrink(x, d, A, h);
    ops::matmul_nt(ops::dropout(x, d.p, d.seed, d.offset, nullptr), A, want);
    ASSERT_EQ(h.shape(), want.shape());
    EXPECT_LE(rel_err(h, want), kTol);
    // The masks matter: the next offset's draws give another h.
    Tensor shifted;
    ops::dropout_shrink(x, {0.25, 7, c.offset + 1, Tensor()}, A, shifted);
    EXPECT_GT(rel_err(shifted, want), 1e-2);
  }
}

TEST(DropoutShrink, BackwardEqualsTheComposition) {
  for (const Case& c : kCases) {
    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE("x [" + std::to_string(c.n) + ", " + std::to_string(c.in) + "]" +
                   (accumulate ? " dx accumulated" : " dx written"));
      const Tensor x = random_tensor({c.n, c.in}, 3), A = random_tensor({c.r, c.in}, 4);
      const Tensor g = random_tensor({c.n, c.r}, 5);
      const Tensor dA0 = random_tensor({c.r, c.in}, 6), dx0 = random_tensor({c.n, c.in}, 7);
      const ops::DropoutDraws d{0.3, 9, c.offset, Tensor()};
      const float alpha = 0.75f;
      // The composition the LoRA hook ran.
      Tensor mask, gx, want_dA = dA0.clone(), want_dx = dx0.clone();
      const Tensor x_drop = ops::dropout(x, d.p, d.seed, d.offset, &mask);
      ops::matmul_tn(g, x_drop, want_dA, alpha, 1.0f);
      ops::matmul_nn(g, A, gx, alpha, 0.0f);
      if (accumulate) ops::dropout_backward_add_(want_dx, gx, mask, d.p);
      else want_dx = ops::dropout(gx, d.p, d.seed, d.offset, nullptr);
      // Fused; a written dx lands in the tensor given (stale values must not survive).
      Tensor dA = dA0.clone(), dx = accumulate ? dx0.clone() : Tensor::full({c.n, c.in}, 7.0f);
      const void* dx_storage = dx.raw();
      ops::dropout_shrink_backward(x, d, g, A, dA, alpha, &dx, accumulate);
      EXPECT_EQ(dx.raw(), dx_storage);
      EXPECT_LE(rel_err(dA, want_dA), kTol);
      EXPECT_LE(rel_err(dx, want_dx), kTol);
      int64_t dropped = 0;
      for (int64_t k = 0; k < x.numel(); ++k) {
        if (mask.data<uint8_t>()[k]) continue;
        ++dropped;  // a dropped element's dx: left as it was, or written 0
        ASSERT_EQ(dx.f32()[k], accumulate ? dx0.f32()[k] : 0.0f) << k;
      }
      EXPECT_GT(dropped, 0);
      // Without dx: dA alone, the same.
      Tensor dA_only = dA0.clone();
      ops::dropout_shrink_backward(x, d, g, A, dA_only, alpha, nullptr, false);
      EXPECT_TRUE(same_bits(dA_only, dA));
      // Without dA (undefined): dx alone, the same.
      Tensor no_dA, dx_only = accumulate ? dx0.clone() : Tensor();
      ops::dropout_shrink_backward(x, d, g, A, no_dA, alpha, &dx_only, accumulate);
      EXPECT_TRUE(same_bits(dx_only, dx));
      EXPECT_FALSE(no_dA.defined());
    }
  }
}

// A written dx into an undefined tensor is made; the sums are the same every run.
TEST(DropoutShrink, BackwardIsTheSameEveryRun) {
  const Tensor x = random_tensor({1000, 97}, 3), A = random_tensor({16, 97}, 4), g = random_tensor({1000, 16}, 5);
  const ops::DropoutDraws d{0.05, 11, 12345, Tensor()};
  Tensor dA1 = Tensor::zeros({16, 97}), dA2 = Tensor::zeros({16, 97}), dx1, dx2;
  ops::dropout_shrink_backward(x, d, g, A, dA1, 2.0f, &dx1, false);
  ops::dropout_shrink_backward(x, d, g, A, dA2, 2.0f, &dx2, false);
  ASSERT_EQ(dx1.shape(), x.shape());
  EXPECT_TRUE(same_bits(dA1, dA2));
  EXPECT_TRUE(same_bits(dx1, dx2));
}

// dA [r', in] with r' < r takes the first r' rows of the gradient (LoRA at a padded rank).
TEST(DropoutShrink, BackwardIntoTheFirstRowsOfDa) {
  const Tensor x = random_tensor({1000, 97}, 3), A = random_tensor({8, 97}, 4), g = random_tensor({1000, 8}, 5);
  const ops::DropoutDraws d{0.05, 11, 12345, Tensor()};
  Tensor all = random_tensor({8, 97}, 6), first = all.slice_rows(0, 5).clone(), dx_all, dx_first;
  ops::dropout_shrink_backward(x, d, g, A, all, 2.0f, &dx_all, false);
  ops::dropout_shrink_backward(x, d, g, A, first, 2.0f, &dx_first, false);
  EXPECT_LE(rel_err(first, all.slice_rows(0, 5).clone()), kTol);
  EXPECT_TRUE(same_bits(dx_first, dx_all));
  Tensor too_many = Tensor::zeros({9, 97});
  EXPECT_ANY_THROW(ops::dropout_shrink_backward(x, d, g, A, too_many, 2.0f, nullptr, false));
}

// p = 0 keeps every element (keep = 1): the plain shrink and its backward.
TEST(DropoutShrink, ZeroPIsThePlainShrink) {
  const Tensor x = random_tensor({1000, 97}, 3), A = random_tensor({16, 97}, 4), g = random_tensor({1000, 16}, 5);
  const ops::DropoutDraws d{0.0, 11, 5, Tensor()};
  Tensor h, want_h;
  ops::dropout_shrink(x, d, A, h);
  ops::matmul_nt(x, A, want_h);
  EXPECT_LE(rel_err(h, want_h), kTol);
  Tensor dA = Tensor::zeros({16, 97}), want_dA = Tensor::zeros({16, 97}), dx, want_dx;
  ops::dropout_shrink_backward(x, d, g, A, dA, 0.5f, &dx, false);
  ops::matmul_tn(g, x, want_dA, 0.5f, 1.0f);
  ops::matmul_nn(g, A, want_dx, 0.5f, 0.0f);
  EXPECT_LE(rel_err(dA, want_dA), kTol);
  EXPECT_LE(rel_err(dx, want_dx), kTol);
}

// The device offset (a CUDA graph replay's; read from the host on the CPU) shifts the draws.
TEST(DropoutShrink, DeviceOffsetShiftsTheDraws) {
  const Tensor x = random_tensor({200, 97}, 3), A = random_tensor({4, 97}, 4), g = random_tensor({200, 4}, 5);
  Tensor delta = Tensor::empty({1}, DType::I64);
  delta.data<int64_t>()[0] = 517;
  Tensor h, want_h;
  ops::dropout_shrink(x, {0.25, 7, 1000, delta}, A, h);
  ops::dropout_shrink(x, {0.25, 7, 1517, Tensor()}, A, want_h);
  EXPECT_TRUE(same_bits(h, want_h));
  Tensor dA = Tensor::zeros({4, 97}), want_dA = Tensor::zeros({4, 97}), dx, want_dx;
  ops::dropout_shrink_backward(x, {0.25, 7, 1000, delta}, g, A, dA, 1.0f, &dx, false);
  ops::dropout_shrink_backward(x, {0.25, 7, 1517, Tensor()}, g, A, want_dA, 1.0f, &want_dx, false);
  EXPECT_TRUE(same_bits(dA, want_dA));
  EXPECT_TRUE(same_bits(dx, want_dx));
}

TEST(DropoutShrink, NeitherDaNorDxIsRefused) {
  const Tensor x = random_tensor({4, 8}, 3), A = random_tensor({2, 8}, 4), g = random_tensor({4, 2}, 5);
  Tensor none;
  EXPECT_THROW(ops::dropout_shrink_backward(x, {0.1, 1, 0, Tensor()}, g, A, none, 1.0f, nullptr, false), InternalError);
}

TEST(DropoutShrink, ShapesThatDoNotFitAreRefused) {
  const Tensor x = random_tensor({10, 8}, 3), A = random_tensor({2, 8}, 4);
  Tensor h;
  EXPECT_THROW(ops::dropout_shrink(x, {0.1, 1, 0, Tensor()}, random_tensor({2, 9}, 4), h), InternalError);
  Tensor dA = Tensor::zeros({2, 8}), dx = Tensor::zeros({10, 8});
  EXPECT_THROW(ops::dropout_shrink_backward(x, {0.1, 1, 0, Tensor()}, random_tensor({10, 3}, 5), A, dA, 1.0f, &dx,
                                            true),
               InternalError);
  Tensor small_dx = Tensor::zeros({9, 8});
  EXPECT_THROW(ops::dropout_shrink_backward(x, {0.1, 1, 0, Tensor()}, random_tensor({10, 2}, 5), A, dA, 1.0f, &small_dx,
                                            true),
               InternalError);
}

// Column blocks (LoRA's K-extension): x read out of a wider matrix and alpha · h written into one,
// the draws those of x as a tensor of its own; g read out of, and dx added into, blocks of another.
// The same values as the whole-tensor forms; every other column untouched.
TEST(DropoutShrink, ColumnBlocksAreTheirOwnTensors) {
  auto cols = [](const Tensor& t, int64_t col, int64_t width) {  // a copy of t's columns
    Tensor out = Tensor::empty({t.dim(0), width});
    ops::copy_columns_(out, 0, t, col, width);
    return out;
  };
  const Tensor wide = random_tensor({300, 120}, 3), A = random_tensor({8, 96}, 4);
  const ops::DropoutDraws d{0.25, 7, 1003, Tensor()};
  Tensor out = wide.clone(), want_h;
  ops::dropout_shrink({wide, 0, 96}, d, A, {out, 104, 8}, 0.5f);
  ops::dropout_shrink(cols(wide, 0, 96), d, A, want_h);
  ops::scale_(want_h, 0.5f);
  EXPECT_TRUE(same_bits(cols(out, 104, 8), want_h));
  EXPECT_TRUE(same_bits(cols(out, 0, 104), cols(wide, 0, 104)));

  // backward: g in columns [100, 108) of gw, dx added into columns [0, 96) of dxw
  const Tensor gw = random_tensor({300, 110}, 5);
  Tensor dxw = random_tensor({300, 100}, 6), dx96 = cols(dxw, 0, 96);
  const Tensor dxw_before = dxw.clone();
  Tensor dA = Tensor::zeros({8, 96}), want_dA = Tensor::zeros({8, 96});
  const ops::ColumnBlock dx_block{dxw, 0, 96};
  ops::dropout_shrink_backward({wide, 0, 96}, d, {gw, 100, 8}, A, dA, 2.0f, &dx_block, true);
  ops::dropout_shrink_backward(cols(wide, 0, 96), d, cols(gw, 100, 8), A, want_dA, 2.0f, &dx96, true);
  EXPECT_TRUE(same_bits(dA, want_dA));
  EXPECT_TRUE(same_bits(cols(dxw, 0, 96), dx96));
  EXPECT_TRUE(same_bits(cols(dxw, 96, 4), cols(dxw_before, 96, 4)));
  // A block that does not lie in its matrix is refused.
  EXPECT_THROW(ops::dropout_shrink({wide, 30, 96}, d, A, {out, 104, 8}, 1.0f), InternalError);
}
