// cuDNN's fused attention (AttentionPath::Cudnn) against the CPU reference: forward (out, lse) and
// backward (dq, dk, dv) for GQA ratios 1/2/3/4, a sliding window and T up to 1024, bf16 (the only
// dtype the path takes). Cross-path: cuDNN's lse feeds our tensor-core backward and our lse feeds
// cuDNN's backward. Tolerances as in attention_test.cpp (docs/cuda.md).
// Where cuDNN cannot be loaded the tests skip, unless LOWRANK_REQUIRE_CUDNN=1 is set: then they fail.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/backend/cuda/attention_path.h"
#include "lowrank/core/error.h"
#include "lowrank/core/shapes_vary.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {

bool cudnn_required() {
  const char* e = std::getenv("LOWRANK_REQUIRE_CUDNN");
  return e && std::string(e) == "1";
}

// GPU present and cuDNN loadable, else skip (or fail with LOWRANK_REQUIRE_CUDNN=1).
#define LR_REQUIRE_CUDNN()                                                                                \
  do {                                                                                                    \
    LR_REQUIRE_GPU();                                                                                     \
    std::string why_;                                                                                     \
    if (!cuda::cudnn_attention_available(&why_)) {                                                        \
      if (cudnn_required()) FAIL() << "LOWRANK_REQUIRE_CUDNN=1 but cuDNN fused attention is unavailable: " << why_; \
      GTEST_SKIP() << "cuDNN fused attention unavailable: " << why_;                                      \
    }                                                                                                     \
  } while (0)

struct PathGuard {
  ~PathGuard() { cuda::set_attention_path(cuda::AttentionPath::Auto); }
};

struct Case {
  int64_t B, T, H, KV, hd, window;
};

ops::AttentionShape shape_of(const Case& c) {
  return {c.B, c.T, c.H, c.KV, c.hd, c.window, 1.0f / std::sqrt(static_cast<float>(c.hd))};
}

// Inputs (f32 on the host, rounded to bf16 for the reference) and the CPU reference.
struct Problem {
  ops::AttentionShape s;
  Tensor q, k, v, dout;      // host f32 (unrounded: to_gpu rounds)
  Tensor qr, kr, vr, dor;    // host, rounded to bf16
  Tensor ref, lse_ref;       // CPU forward
  Problem(const Case& c, uint64_t seed) : s(shape_of(c)) {
    q = random_cpu({c.B * c.T, c.H * c.hd}, seed, 2.0f);
    k = random_cpu({c.B * c.T, c.KV * c.hd}, seed + 1, 2.0f);
    v = random_cpu({c.B * c.T, c.KV * c.hd}, seed + 2);
    dout = random_cpu({c.B * c.T, c.H * c.hd}, seed + 3);
    qr = rounded(q, DType::BF16), kr = rounded(k, DType::BF16), vr = rounded(v, DType::BF16);
    dor = rounded(dout, DType::BF16);
    ref = cpu::attention(qr, kr, vr, s, &lse_ref);
  }
};

void report(const char* what, const Case& c, double e) {
  std::printf("  [cudnn %d] %-28s B=%lld T=%lld H=%lld KV=%lld hd=%lld w=%lld: rel err %.3g\n", cuda::cudnn_version(),
              what, (long long)c.B, (long long)c.T, (long long)c.H, (long long)c.KV, (long long)c.hd,
              (long long)c.window, e);
}

// Forward and backward of `fwd` and `bwd` paths against the CPU: out and lse of the forward; the
// backward runs from the GPU forward's out and lse, the reference from the CPU-rounded same out.
void check(const Case& c, uint64_t seed, cuda::AttentionPath fwd, cuda::AttentionPath bwd, const char* tag) {
  SCOPED_TRACE(testing::Message() << tag << " B=" << c.B << " T=" << c.T << " H=" << c.H << " KV=" << c.KV
                                  << " hd=" << c.hd << " window=" << c.window);
  PathGuard guard;
  Problem p(c, seed);
  Tensor qd = to_gpu(p.q, DType::BF16), kd = to_gpu(p.k, DType::BF16), vd = to_gpu(p.v, DType::BF16);
  cuda::set_attention_path(fwd);
  Tensor lse;
  Tensor out = ops::attention(qd, kd, vd, p.s, &lse);
  EXPECT_EQ(out.dtype(), DType::BF16);
  const double e_out = rel_err(out, p.ref), e_lse = rel_err(lse, p.lse_ref);
  report((std::string(tag) + " out").c_str(), c, e_out);
  report((std::string(tag) + " lse").c_str(), c, e_lse);
  EXPECT_LE(e_out, kTolBf16);
  EXPECT_LE(e_lse, kTolF32);

  Tensor out_r = rounded(to_host(out), DType::BF16);
  Tensor dq_ref, dk_ref, dv_ref, dq, dk, dv;
  cpu::attention_backward(p.dor, p.qr, p.kr, p.vr, out_r, p.lse_ref, p.s, dq_ref, dk_ref, dv_ref);
  cuda::set_attention_path(bwd);
  ops::attention_backward(to_gpu(p.dout, DType::BF16), qd, kd, vd, out, lse, p.s, dq, dk, dv);
  EXPECT_EQ(dq.dtype(), DType::BF16);
  const double floor = frob(dv_ref);
  const double e_dq = rel_err_floor(dq, dq_ref, floor), e_dk = rel_err_floor(dk, dk_ref, floor);
  const double e_dv = rel_err(dv, dv_ref);
  report((std::string(tag) + " dq").c_str(), c, e_dq);
  report((std::string(tag) + " dk").c_str(), c, e_dk);
  report((std::string(tag) + " dv").c_str(), c, e_dv);
  EXPECT_LE(e_dq, kTolBf16);
  EXPECT_LE(e_dk, kTolBf16);
  EXPECT_LE(e_dv, kTolBf16);
}

const Case kCases[] = {
    {2, 128, 4, 2, 64, 0},     // GQA 2, tile-multiple T
    {1, 257, 8, 8, 128, 0},    // MHA, T no multiple of 64 / 128
    {2, 100, 6, 2, 64, 0},     // GQA 3
    {1, 200, 4, 2, 128, 17},   // sliding window 17
    {1, 1024, 32, 8, 128, 0},  // GQA 4, long
};

}  // namespace

TEST(CudaAttentionCudnn, MatchesCpu) {
  LR_REQUIRE_CUDNN();
  std::printf("  cuDNN version %d\n", cuda::cudnn_version());
  uint64_t seed = 5000;
  for (const Case& c : kCases) check(c, seed += 10, cuda::AttentionPath::Cudnn, cuda::AttentionPath::Cudnn, "cudnn");
}

// q, k, v side by side in one matrix (ops::attention_packed and attention_backward_packed; LoRA's
// stacked q, k, v product): through cuDNN's tensor strides the same values as the dense path's, bit
// for bit, forward and backward; on the other paths computed from copies; a packed matrix of another
// width refused.
TEST(CudaAttentionCudnn, PackedQkvEqualsDense) {
  LR_REQUIRE_CUDNN();
  PathGuard guard;
  uint64_t seed = 7000;
  for (const Case& c : {kCases[0], kCases[2], kCases[3]})
    for (cuda::AttentionPath path : {cuda::AttentionPath::Cudnn, cuda::AttentionPath::Auto, cuda::AttentionPath::Generic}) {
      SCOPED_TRACE(testing::Message() << "path " << static_cast<int>(path) << " T=" << c.T << " H=" << c.H
                                      << " KV=" << c.KV << " hd=" << c.hd);
      Problem p(c, seed += 10);
      const Tensor qd = to_gpu(p.q, DType::BF16), kd = to_gpu(p.k, DType::BF16), vd = to_gpu(p.v, DType::BF16);
      const Tensor dout = to_gpu(p.dout, DType::BF16);
      const int64_t rows = qd.dim(0), wq = qd.dim(1), wk = kd.dim(1), w = wq + 2 * wk;
      Tensor qkv = Tensor::empty({rows, w}, DType::BF16, gpu());
      ops::copy_columns_(qkv, 0, qd, 0, wq);
      ops::copy_columns_(qkv, wq, kd, 0, wk);
      ops::copy_columns_(qkv, wq + wk, vd, 0, wk);
      cuda::set_attention_path(path);
      Tensor lse, lse_p, dq, dk, dv, dqkv;
      const Tensor out = ops::attention(qd, kd, vd, p.s, &lse);
      const Tensor out_p = ops::attention_packed(qkv, p.s, &lse_p);
      const Tensor o = to_host(out), op = to_host(out_p), l = to_host(lse), lp = to_host(lse_p);
      for (int64_t e = 0; e < o.numel(); ++e) ASSERT_EQ(op.f32()[e], o.f32()[e]) << "out " << e;
      for (int64_t e = 0; e < l.numel(); ++e) ASSERT_EQ(lp.f32()[e], l.f32()[e]) << "lse " << e;
      ops::attention_backward(dout, qd, kd, vd, out, lse, p.s, dq, dk, dv);
      ops::attention_backward_packed(dout, qkv, out, lse, p.s, dqkv);
      const Tensor h = to_host(dqkv), hq = to_host(dq), hk = to_host(dk), hv = to_host(dv);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < wq; ++j) ASSERT_EQ(h.f32()[r * w + j], hq.f32()[r * wq + j]) << r << ", " << j;
        for (int64_t j = 0; j < wk; ++j) {
          ASSERT_EQ(h.f32()[r * w + wq + j], hk.f32()[r * wk + j]) << r << ", k " << j;
          ASSERT_EQ(h.f32()[r * w + wq + wk + j], hv.f32()[r * wk + j]) << r << ", v " << j;
        }
      }
      const Tensor narrow = Tensor::empty({rows, w - 8}, DType::BF16, gpu());
      EXPECT_ANY_THROW(ops::attention_packed(narrow, p.s));
      EXPECT_ANY_THROW(ops::attention_backward_packed(dout, narrow, out, lse, p.s, dqkv));
    }
}

TEST(CudaAttentionCudnn, CrossPathLse) {
  LR_REQUIRE_CUDNN();
  uint64_t seed = 6000;
  const Case cases[] = {{2, 128, 4, 2, 64, 0}, {1, 200, 4, 2, 128, 17}, {1, 1024, 32, 8, 128, 0}};
  for (const Case& c : cases) {
    // cuDNN forward (its Stats as our lse) into our tensor-core backward, and the other way round.
    check(c, seed += 10, cuda::AttentionPath::Cudnn, cuda::AttentionPath::TensorCore, "cudnn fwd -> tc bwd");
    check(c, seed += 10, cuda::AttentionPath::TensorCore, cuda::AttentionPath::Cudnn, "tc fwd -> cudnn bwd");
    // Both forwards write the same statistic.
    PathGuard guard;
    Problem p(c, seed += 10);
    Tensor qd = to_gpu(p.q, DType::BF16), kd = to_gpu(p.k, DType::BF16), vd = to_gpu(p.v, DType::BF16);
    Tensor lse_c, lse_t;
    cuda::set_attention_path(cuda::AttentionPath::Cudnn);
    ops::attention(qd, kd, vd, p.s, &lse_c);
    cuda::set_attention_path(cuda::AttentionPath::TensorCore);
    ops::attention(qd, kd, vd, p.s, &lse_t);
    EXPECT_LE(rel_err(lse_c, lse_t), kTolF32) << "B=" << c.B << " T=" << c.T << " window=" << c.window;
  }
}

// Shapes that vary call to call (a server's prefills, evaluation's examples: the forward inside a
// ShapesVary scope): their (B, T) are new at almost every call, and each new shape would cost a
// cuDNN plan (50–110 ms). Short prompts must build none (tensor-core kernels); long ones one per
// length bucket (cuDNN a sequence at a time, T padded with zero rows, or read in place when T is
// a whole bucket). The outputs are the CPU's either way.
TEST(CudaAttentionCudnn, VaryingShapesBuildAPlanPerLengthBucketOnly) {
  LR_REQUIRE_CUDNN();
  PathGuard guard;
  auto run = [](const Case& c, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "B=" << c.B << " T=" << c.T << " window=" << c.window);
    Problem p(c, seed);
    const ShapesVary scope;
    Tensor out = ops::attention(to_gpu(p.q, DType::BF16), to_gpu(p.k, DType::BF16), to_gpu(p.v, DType::BF16), p.s);
    const double e = rel_err(out, p.ref);
    report("varying out", c, e);
    EXPECT_LE(e, kTolBf16);
  };
  const int64_t before = cuda::cudnn_attention_plans();
  for (const Case& c : {Case{3, 100, 4, 2, 64, 0}, Case{5, 37, 8, 8, 128, 0}, Case{2, 200, 4, 2, 128, 17}}) {
    run(c, 8000 + c.T);
    run(Case{c.B, c.T + 3, c.H, c.KV, c.hd, c.window}, 8050 + c.T);
  }
  EXPECT_EQ(cuda::cudnn_attention_plans(), before) << "a short prefill built a cuDNN plan";
  // 1,100 and 1,500 positions share the bucket of 2,048: one plan for both, and for every batch.
  for (const Case& c : {Case{2, 1100, 4, 2, 64, 0}, Case{1, 1500, 4, 2, 64, 0}, Case{3, 1300, 4, 2, 64, 0}})
    run(c, 8100 + c.T);
  EXPECT_EQ(cuda::cudnn_attention_plans(), before + 1);
  // Whole buckets: each sequence's rows read in place (B > 1) or the call passed through (B = 1).
  run(Case{3, 1024, 4, 2, 64, 0}, 8150);
  run(Case{1, 1024, 4, 2, 64, 0}, 8151);
  EXPECT_EQ(cuda::cudnn_attention_plans(), before + 2);
  run(Case{2, 1025, 4, 2, 64, 300}, 8200);  // a sliding window, within the padded length
  EXPECT_EQ(cuda::cudnn_attention_plans(), before + 3);
}

// Forcing the path where it cannot apply is an error, not a silent fallback; Auto falls back.
TEST(CudaAttentionCudnn, ForcedPathRejectsUnsupported) {
  LR_REQUIRE_GPU();
  PathGuard guard;
  const Case c{1, 64, 2, 2, 64, 0};
  Problem p(c, 7000);
  Tensor qd = to_gpu(p.q, DType::F32), kd = to_gpu(p.k, DType::F32), vd = to_gpu(p.v, DType::F32);
  cuda::set_attention_path(cuda::AttentionPath::Cudnn);
  EXPECT_THROW(ops::attention(qd, kd, vd, p.s), InternalError);  // f32: cuDNN's path is bf16 only
  cuda::set_attention_path(cuda::AttentionPath::Auto);
  Tensor out = ops::attention(qd, kd, vd, p.s);
  EXPECT_LE(rel_err(out, cpu::attention(p.q, p.k, p.v, p.s, nullptr)), kTolF32);
}

#endif
