// Element-wise CUDA ops against the CPU ops: adds, bias, activations, SwiGLU, casts, transpose.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cstring>

#include "cuda/cuda_test_util.h"
#include "lowrank/backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

TEST(CudaElementwise, AddScaledAndBiasWithMixedDtypes) {
  LR_REQUIRE_GPU();
  uint64_t seed = 1;
  for (DType yt : float_types())
    for (DType xt : float_types()) {
      SCOPED_TRACE(testing::Message() << "y " << name(yt) << " x " << name(xt));
      for (int64_t cols : {77, 80}) {
      Tensor y = random_cpu({33, cols}, seed++), x = random_cpu({33, cols}, seed++), b = random_cpu({cols}, seed++);
      Tensor ref = rounded(y, yt).clone();
      cpu::add_scaled_(ref, rounded(x, xt), -0.75f);
      cpu::add_bias_(ref, rounded(b, xt));
      cpu::add_(ref, rounded(x, xt));
      Tensor yd = to_gpu(y, yt);
      ops::add_scaled_(yd, to_gpu(x, xt), -0.75f);
      ops::add_bias_(yd, to_gpu(b, xt));
      ops::add_(yd, to_gpu(x, xt));
      EXPECT_LE(rel_err(yd, ref), tol_for(yt == DType::BF16 || xt == DType::BF16 ? DType::BF16 : DType::F32));
      }
    }
}

TEST(CudaElementwise, ActivationsForwardAndBackward) {
  LR_REQUIRE_GPU();
  uint64_t seed = 10;
  // 129x67: one element per access; 64x40: 16-byte vector accesses.
  for (Shape shape : {Shape{129, 67}, Shape{64, 40}})
  for (DType t : float_types())
    for (ops::Act a : {ops::Act::SiLU, ops::Act::GeluTanh, ops::Act::GeluErf, ops::Act::ReLU}) {
      SCOPED_TRACE(testing::Message() << name(t) << " act " << int(a) << " " << shape_str(shape));
      Tensor x = random_cpu(shape, seed++, 4.0f), dy = random_cpu(shape, seed++);
      Tensor xr = rounded(x, t), dyr = rounded(dy, t);
      EXPECT_LE(rel_err(ops::activation(to_gpu(x, t), a), cpu::activation(xr, a)), tol_for(t));
      EXPECT_LE(rel_err(ops::activation_backward(to_gpu(dy, t), to_gpu(x, t), a), cpu::activation_backward(dyr, xr, a)),
                tol_for(t));
    }
}

TEST(CudaElementwise, SwiGluForwardAndBackward) {
  LR_REQUIRE_GPU();
  for (Shape shape : {Shape{101, 45}, Shape{64, 48}})
  for (DType t : float_types()) {
    SCOPED_TRACE(shape_str(shape));
    Tensor g = random_cpu(shape, 1, 3.0f), u = random_cpu(shape, 2, 2.0f), dy = random_cpu(shape, 3);
    Tensor gr = rounded(g, t), ur = rounded(u, t), dyr = rounded(dy, t);
    EXPECT_LE(rel_err(ops::swiglu(to_gpu(g, t), to_gpu(u, t)), cpu::swiglu(gr, ur)), tol_for(t)) << name(t);
    Tensor dg, du, rdg, rdu;
    ops::swiglu_backward(to_gpu(dy, t), to_gpu(g, t), to_gpu(u, t), dg, du);
    cpu::swiglu_backward(dyr, gr, ur, rdg, rdu);
    EXPECT_LE(rel_err(dg, rdg), tol_for(t)) << name(t);
    EXPECT_LE(rel_err(du, rdu), tol_for(t)) << name(t);
  }
}

TEST(CudaElementwise, CastsAreExactRoundToNearestEven) {
  LR_REQUIRE_GPU();
  Tensor x = random_cpu({1001}, 5, 100.0f);
  for (DType to : {DType::BF16, DType::F16}) {
    Tensor ref = x.to(to);                            // CPU rounding
    Tensor got = ops::cast(x.to(gpu()), to).to(Device::cpu());
    EXPECT_EQ(std::memcmp(got.raw(), ref.raw(), ref.nbytes()), 0) << dtype_name(to);
    Tensor back = ops::cast(got.to(gpu()), DType::F32).to(Device::cpu());
    Tensor back_ref = ref.to(DType::F32);
    EXPECT_EQ(std::memcmp(back.raw(), back_ref.raw(), back_ref.nbytes()), 0) << dtype_name(to);
  }
  Tensor same = x.to(gpu());
  EXPECT_EQ(ops::cast(same, DType::F32).raw(), same.raw());  // no copy when the dtype matches
}

TEST(CudaElementwise, FillScaleTranspose) {
  LR_REQUIRE_GPU();
  for (DType t : float_types()) {
    Tensor d = Tensor::empty({7, 9}, t, gpu());
    ops::fill_(d, 1.5f);
    ops::scale_(d, -2.0f);
    Tensor h = to_host(d);
    for (int64_t i = 0; i < h.numel(); ++i) ASSERT_EQ(h.f32()[i], -3.0f);
    Tensor x = random_cpu({67, 45}, 9);
    Tensor tx = ops::transpose2d(to_gpu(x, t));
    EXPECT_EQ(tx.shape(), (Shape{45, 67}));
    Tensor ref = cpu::transpose2d(rounded(x, t));
    EXPECT_EQ(rel_err(tx, ref), 0.0) << name(t);
  }
}

TEST(CudaElementwise, BiasGradIsAColumnSum) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (auto [n, m] : {std::pair{1, 5}, std::pair{333, 70}, std::pair{20000, 65}}) {
      Tensor dy = random_cpu({n, m}, n + m), db0 = random_cpu({m}, 3);
      Tensor ref = db0.clone();
      cpu::bias_grad_(ref, rounded(dy, t));
      Tensor db = db0.to(gpu());
      ops::bias_grad_(db, to_gpu(dy, t));
      EXPECT_LE(rel_err(db, ref), kTolF32) << name(t) << " " << n << "x" << m;
    }
}
#endif

#ifdef LOWRANK_WITH_CUDA
TEST(CudaElementwise, MulAndCopyColumns) {
  LR_REQUIRE_GPU();
  uint64_t seed = 40;
  for (DType yt : float_types())
    for (DType xt : float_types()) {
      for (Shape shape : {Shape{37, 65}, Shape{32, 64}}) {
      Tensor y = random_cpu(shape, seed++), x = random_cpu(shape, seed++);
      Tensor ref = rounded(y, yt).clone();
      cpu::mul_(ref, rounded(x, xt));
      Tensor yd = to_gpu(y, yt);
      ops::mul_(yd, to_gpu(x, xt));
      EXPECT_LE(rel_err(yd, ref), tol_for(yt == DType::BF16 || xt == DType::BF16 ? DType::BF16 : DType::F32));
      }
    }
  for (DType t : float_types()) {
    const int64_t n = 33, d = 40;
    Tensor qkv = random_cpu({n, 3 * d + 1}, seed++), dst0 = random_cpu({n, 2 * d + 3}, seed++);
    Tensor ref = rounded(dst0, t).clone();
    cpu::copy_columns_(ref, 3, rounded(qkv, t), d + 1, 2 * d);
    Tensor dst = to_gpu(dst0, t);
    ops::copy_columns_(dst, 3, to_gpu(qkv, t), d + 1, 2 * d);
    EXPECT_EQ(rel_err(dst, ref), 0.0) << name(t);
  }
}

// Gemma's logit soft-capping: f32 logits (the vocabulary projection) and bf16 ones (the loss chunks),
// inputs well beyond the cap so that tanh saturates.
TEST(CudaElementwise, SoftCapForwardAndBackward) {
  LR_REQUIRE_GPU();
  uint64_t seed = 60;
  const float cap = 15.0f;
  for (DType t : float_types()) {
    Tensor x = random_cpu({37, 65}, seed++, 40.0f), g = random_cpu({37, 65}, seed++);
    Tensor ref = rounded(x, t).clone();
    cpu::softcap_(ref, cap);
    Tensor xd = to_gpu(x, t);
    ops::softcap_(xd, cap);
    EXPECT_LE(rel_err(xd, ref), tol_for(t)) << name(t);
    Tensor capped = rounded(to_host(xd), t);
    Tensor dref = rounded(g, t).clone();
    cpu::softcap_backward_(dref, capped, cap);
    Tensor gd = to_gpu(g, t);
    ops::softcap_backward_(gd, xd, cap);
    EXPECT_LE(rel_err(gd, dref), tol_for(t)) << name(t);
  }
}
#endif
