// Fused causal attention on the GPU against the CPU reference, forward (out, lse) and backward
// (dq, dk, dv): GQA ratios 1/2/3 and MQA, sliding windows, soft-capping, lengths that are no
// multiple of the tiles, head dims 32..256, T up to 1024, f32 and bf16.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {

struct Case {
  int64_t B, T, H, KV, hd, window;
  float softcap = 0;  // Gemma 2's attention logit soft-capping (generic kernels only)
};

void check(const Case& c, DType t, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << name(t) << " B=" << c.B << " T=" << c.T << " H=" << c.H << " KV=" << c.KV
                                  << " hd=" << c.hd << " window=" << c.window << " softcap=" << c.softcap);
  ops::AttentionShape s{c.B, c.T, c.H, c.KV, c.hd, c.window, 1.0f / std::sqrt(static_cast<float>(c.hd)),
                        c.softcap};
  Tensor q = random_cpu({c.B * c.T, c.H * c.hd}, seed, 2.0f), k = random_cpu({c.B * c.T, c.KV * c.hd}, seed + 1, 2.0f);
  Tensor v = random_cpu({c.B * c.T, c.KV * c.hd}, seed + 2), dout = random_cpu({c.B * c.T, c.H * c.hd}, seed + 3);
  Tensor qr = rounded(q, t), kr = rounded(k, t), vr = rounded(v, t), dor = rounded(dout, t);
  Tensor lse_ref, lse;
  Tensor ref = cpu::attention(qr, kr, vr, s, &lse_ref);
  Tensor qd = to_gpu(q, t), kd = to_gpu(k, t), vd = to_gpu(v, t);
  Tensor out = ops::attention(qd, kd, vd, s, &lse);
  EXPECT_EQ(out.dtype(), t);
  EXPECT_LE(rel_err(out, ref), tol_for(t));
  EXPECT_LE(rel_err(lse, lse_ref), kTolF32);

  // The backward of both runs from the same (CPU-rounded) forward output, so only the backward
  // kernels are compared.
  Tensor out_r = rounded(to_host(out), t);
  Tensor dq_ref, dk_ref, dv_ref, dq, dk, dv;
  cpu::attention_backward(dor, qr, kr, vr, out_r, lse_ref, s, dq_ref, dk_ref, dv_ref);
  ops::attention_backward(to_gpu(dout, t), qd, kd, vd, out, lse, s, dq, dk, dv);
  EXPECT_EQ(dq.dtype(), t);
  const double tol = t == DType::F32 ? 1e-4 : kTolBf16;  // f32: long sums in another order
  // When every row sees only itself (window 1, T = 1), P = 1 and dS = P (dP - D) = 0: dq and dk
  // are exactly zero and the references hold rounding noise, so they are measured against ||dv||.
  const double floor = frob(dv_ref);
  EXPECT_LE(rel_err_floor(dq, dq_ref, floor), tol);
  EXPECT_LE(rel_err_floor(dk, dk_ref, floor), tol);
  EXPECT_LE(rel_err(dv, dv_ref), tol);
}

}  // namespace

// Runs the cases on both kernel paths: the tensor-core one applies to bf16 with head_dim 64/128.
struct PathGuard {
  ~PathGuard() { cuda::set_attention_path(cuda::AttentionPath::Auto); }
};

TEST(CudaAttention, SmallShapesAllDtypes) {
  LR_REQUIRE_GPU();
  uint64_t seed = 1;
  const Case cases[] = {
      {2, 37, 4, 4, 64, 0},   // GQA 1, T not a tile multiple
      {1, 100, 6, 3, 32, 0},  // GQA 2
      {2, 65, 6, 2, 128, 0},  // GQA 3
      {1, 1, 2, 1, 64, 0},    // one token, MQA
      {1, 130, 4, 1, 80, 17}, // sliding window, head dim 80
      {3, 50, 2, 2, 256, 0},  // largest head dim
      {1, 70, 3, 1, 16, 1},   // window 1: each row sees itself only
      {2, 37, 4, 2, 64, 0, 1.5f},   // soft-capping, hard (scores of several units against a cap of 1.5)
      {1, 130, 4, 1, 80, 17, 5.0f}, // soft-capping with a sliding window (Gemma 2's sliding layers)
  };
  PathGuard guard;
  for (auto path : {cuda::AttentionPath::Generic, cuda::AttentionPath::Auto}) {
    cuda::set_attention_path(path);
    for (DType t : float_types())
      for (const Case& c : cases) check(c, t, seed += 10);
  }
}

TEST(CudaAttention, TensorCoreShapes) {
  LR_REQUIRE_GPU();
  PathGuard guard;
  cuda::set_attention_path(cuda::AttentionPath::TensorCore);
  uint64_t seed = 2000;
  const Case cases[] = {
      {2, 37, 4, 4, 64, 0},    {1, 130, 6, 3, 128, 0}, {2, 64, 6, 2, 64, 0},  {1, 1, 2, 1, 128, 0},
      {1, 200, 4, 1, 64, 17},  {1, 129, 2, 2, 128, 64}, {1, 300, 3, 1, 64, 1}, {3, 65, 4, 2, 128, 0},
  };
  for (const Case& c : cases) check(c, DType::BF16, seed += 10);
}

TEST(CudaAttention, LongSequences) {
  LR_REQUIRE_GPU();
  PathGuard guard;
  uint64_t seed = 1000;
  for (auto path : {cuda::AttentionPath::Generic, cuda::AttentionPath::Auto}) {
    cuda::set_attention_path(path);
    for (DType t : float_types()) {
      if (path == cuda::AttentionPath::Auto && t == DType::F32) continue;  // same kernels as Generic
      check({1, 1024, 4, 2, 64, 0}, t, seed += 10);
      check({1, 1024, 3, 1, 128, 256}, t, seed += 10);
      check({2, 513, 4, 4, 128, 0}, t, seed += 10);
    }
  }
}
#endif
