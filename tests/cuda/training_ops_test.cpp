// Training ops on the GPU: LoRA dropout (the same draws as the CPU Rng), AdamW (bit-exact with
// the CPU), sums of squares and clipping.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cstring>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

TEST(CudaTraining, DropoutMaskEqualsTheCpuRngDraws) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (double p : {0.05, 0.1, 0.5})
      for (uint64_t offset : {uint64_t(0), uint64_t(3), uint64_t(1234567)}) {
        SCOPED_TRACE(testing::Message() << name(t) << " p " << p << " offset " << offset);
        Tensor x = random_cpu({57, 131}, offset + 1);
        Tensor mask_ref, mask;
        Tensor ref = cpu::dropout(rounded(x, t), p, 42, offset, &mask_ref);
        Tensor got = ops::dropout(to_gpu(x, t), p, 42, offset, &mask);
        Tensor mh = mask.to(Device::cpu());
        ASSERT_EQ(std::memcmp(mh.raw(), mask_ref.raw(), mask_ref.nbytes()), 0);
        EXPECT_LE(rel_err(got, ref), t == DType::F32 ? 0.0 : kTolBf16);
        // Backward: dx += mask * gx / keep.
        Tensor gx = random_cpu({57, 131}, 7), dx0 = random_cpu({57, 131}, 8);
        Tensor dref = rounded(dx0, t).clone();
        cpu::dropout_backward_add_(dref, rounded(gx, t), mask_ref, p);
        Tensor dx = to_gpu(dx0, t);
        ops::dropout_backward_add_(dx, to_gpu(gx, t), mask, p);
        EXPECT_LE(rel_err(dx, dref), t == DType::F32 ? 0.0 : kTolBf16);
        // Drawn again from the same (seed, offset) without a mask: the same values.
        Tensor again = ops::dropout(to_gpu(x, t), p, 42, offset, nullptr);
        EXPECT_EQ(rel_err(again, got.to(Device::cpu())), 0.0);
      }
}

// The 8-wide path (bf16, a multiple of 8 elements, offsets on a Philox block) and the
// element-wise one agree with the CPU draws, also for offsets that take the element-wise path.
TEST(CudaTraining, DropoutWidePathEqualsTheCpuRngDraws) {
  LR_REQUIRE_GPU();
  for (uint64_t offset : {uint64_t(0), uint64_t(8), uint64_t(4000004), uint64_t(2), uint64_t(7)}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    Tensor x = random_cpu({96, 136}, offset + 3);
    Tensor mask_ref, mask;
    Tensor ref = cpu::dropout(rounded(x, DType::BF16), 0.3, 9, offset, &mask_ref);
    Tensor got = ops::dropout(to_gpu(x, DType::BF16), 0.3, 9, offset, &mask);
    Tensor mh = mask.to(Device::cpu());
    ASSERT_EQ(std::memcmp(mh.raw(), mask_ref.raw(), mask_ref.nbytes()), 0);
    EXPECT_LE(rel_err(got, ref), kTolBf16);
    // The 8-wide backward, into f32 and bf16 gradients.
    for (DType t : float_types()) {
      Tensor gx = random_cpu({96, 136}, 7), dx0 = random_cpu({96, 136}, 8);
      Tensor dref = rounded(dx0, t).clone();
      cpu::dropout_backward_add_(dref, rounded(gx, DType::BF16), mask_ref, 0.3);
      Tensor dx = to_gpu(dx0, t);
      ops::dropout_backward_add_(dx, to_gpu(gx, DType::BF16), mask, 0.3);
      EXPECT_LE(rel_err(dx, dref), t == DType::F32 ? 1e-6 : kTolBf16) << name(t);
    }
  }
}

TEST(CudaTraining, AdamWIsBitExactWithTheCpu) {
  LR_REQUIRE_GPU();
  const int64_t n = 10007;
  Tensor p = random_cpu({n}, 1), m = Tensor::zeros({n}), v = Tensor::zeros({n});
  Tensor pd = p.to(gpu()), md = m.to(gpu()), vd = v.to(gpu());
  for (int step = 1; step <= 5; ++step) {
    Tensor g = random_cpu({n}, 100 + step, 0.01f);
    const double lr = 2e-3, b1 = 0.9, b2 = 0.999, wd = step % 2 ? 0.01 : 0.0;
    ops::AdamWScalars s;
    s.apply_decay = wd != 0.0;
    s.decay = static_cast<float>(1.0 - lr * wd);
    s.lerp_w = static_cast<float>(1.0 - b1);
    s.beta2 = static_cast<float>(b2);
    s.one_minus_beta2 = static_cast<float>(1.0 - b2);
    s.bc2_sqrt = static_cast<float>(std::pow(1.0 - std::pow(b2, step), 0.5));
    s.eps = 1e-8f;
    s.neg_step = static_cast<float>(-lr / (1.0 - std::pow(b1, step)));
    cpu::adamw_update_(p, g, m, v, s);
    ops::adamw_update_(pd, g.to(gpu()), md, vd, s);
  }
  for (auto [ref, got] : {std::pair{p, pd}, std::pair{m, md}, std::pair{v, vd}}) {
    Tensor h = got.to(Device::cpu());
    int64_t diff = 0;
    for (int64_t i = 0; i < n; ++i) diff += h.f32()[i] != ref.f32()[i];
    EXPECT_EQ(diff, 0);
  }
}

TEST(CudaTraining, SumOfSquaresAndClip) {
  LR_REQUIRE_GPU();
  for (DType t : float_types())
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(3000001)}) {
      Tensor x = random_cpu({n}, n);
      Tensor xr = rounded(x, t);
      Tensor acc_ref = Tensor::zeros({1}, DType::F64);
      cpu::sum_squares_(xr, acc_ref);
      Tensor acc = Tensor::zeros({1}, DType::F64, gpu());
      Tensor xd = to_gpu(x, t);
      ops::sum_squares_(xd, acc);
      ops::sum_squares_(xd, acc);  // accumulates
      const double ref = 2 * acc_ref.data<double>()[0];
      EXPECT_NEAR(acc.to(Device::cpu()).data<double>()[0], ref, 1e-12 * ref) << name(t) << " " << n;
      // Run-to-run reproducible bits.
      Tensor acc2 = Tensor::zeros({1}, DType::F64, gpu());
      ops::sum_squares_(xd, acc2);
      ops::sum_squares_(xd, acc2);
      EXPECT_EQ(acc2.to(Device::cpu()).data<double>()[0], acc.to(Device::cpu()).data<double>()[0]);
      // Clip to half the norm; a large max_norm leaves x alone.
      const double norm = std::sqrt(ref);
      Tensor clipped_ref = xr.clone();
      Tensor tot = Tensor::zeros({1}, DType::F64);
      tot.data<double>()[0] = ref;
      cpu::clip_by_total_(clipped_ref, tot, norm / 2);
      ops::clip_by_total_(xd, acc, norm / 2);
      EXPECT_LE(rel_err(xd, clipped_ref), tol_for(t));
      Tensor before = to_host(xd);
      ops::clip_by_total_(xd, acc, norm * 10);
      EXPECT_EQ(rel_err(xd, before), 0.0);
    }
}
// The multi-tensor forms against the per-tensor ops on the CPU, over lists that mix sizes below,
// at and above the kernels' 65536-element chunk (and an empty tensor).
TEST(CudaTraining, MultiTensorOpsEqualThePerTensorOps) {
  LR_REQUIRE_GPU();
  const std::vector<int64_t> sizes = {1, 0, 1000, 65536, 65537, 300001, 17};
  std::vector<Tensor> p, g, m, v, pd, gd, md, vd;
  std::vector<uint8_t> decay;
  for (size_t i = 0; i < sizes.size(); ++i) {
    p.push_back(random_cpu({sizes[i]}, 10 + i));
    g.push_back(random_cpu({sizes[i]}, 20 + i, 0.01f));
    m.push_back(random_cpu({sizes[i]}, 30 + i, 0.001f));
    v.push_back(random_cpu({sizes[i]}, 40 + i, 0.001f));
    for (auto* t : {&v.back()})
      for (int64_t k = 0; k < t->numel(); ++k) t->f32()[k] = std::fabs(t->f32()[k]);
    pd.push_back(p.back().to(gpu()));
    gd.push_back(g.back().to(gpu()));
    md.push_back(m.back().to(gpu()));
    vd.push_back(v.back().to(gpu()));
    decay.push_back(i % 2);
  }
  // Sum of squares: the same total (another order, f64), reproducible, accumulated.
  Tensor acc_ref = Tensor::zeros({1}, DType::F64);
  for (const Tensor& t : g) cpu::sum_squares_(t, acc_ref);
  Tensor acc = Tensor::zeros({1}, DType::F64, gpu());
  ops::sum_squares_all_(gd, acc);
  const double ref = acc_ref.data<double>()[0];
  EXPECT_NEAR(acc.to(Device::cpu()).data<double>()[0], ref, 1e-12 * ref);
  Tensor acc2 = Tensor::zeros({1}, DType::F64, gpu());
  ops::sum_squares_all_(gd, acc2);
  EXPECT_EQ(acc2.to(Device::cpu()).data<double>()[0], acc.to(Device::cpu()).data<double>()[0]);
  // Clip to half the norm.
  Tensor tot = Tensor::zeros({1}, DType::F64);
  tot.data<double>()[0] = ref;
  for (Tensor& t : g) cpu::clip_by_total_(t, tot, std::sqrt(ref) / 2);
  ops::clip_by_total_all_(gd, acc, std::sqrt(ref) / 2);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_LE(rel_err(gd[i], g[i]), kTolF32) << i;
  // AdamW: bit-exact, with per-tensor weight decay.
  ops::AdamWScalars s;
  s.apply_decay = true;
  s.decay = 0.99f;
  s.neg_step = -1e-3f;
  s.bc2_sqrt = 0.03f;
  for (size_t i = 0; i < p.size(); ++i) {
    ops::AdamWScalars si = s;
    si.apply_decay = decay[i];
    cpu::adamw_update_(p[i], g[i], m[i], v[i], si);
  }
  std::vector<Tensor> working(p.size());  // bf16 working copies for every other tensor
  for (size_t i = 0; i < p.size(); i += 2) working[i] = Tensor::zeros({sizes[i]}, DType::BF16, gpu());
  ops::adamw_update_all_(pd, gd, md, vd, decay, s, working);
  for (size_t i = 0; i < p.size(); ++i) {
    for (auto [ref_t, got] : {std::pair{p[i], pd[i]}, std::pair{m[i], md[i]}, std::pair{v[i], vd[i]}}) {
      Tensor h = got.to(Device::cpu());
      ASSERT_EQ(h.nbytes(), ref_t.nbytes());
      EXPECT_EQ(std::memcmp(h.raw(), ref_t.raw(), h.nbytes()), 0) << "tensor " << i;
    }
    if (!working[i].defined()) continue;
    Tensor want = p[i].to(DType::BF16), got = working[i].to(Device::cpu());  // round to nearest even
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << "working copy " << i;
  }
  // Zeroing: every element of every tensor (allocations are NaN-poisoned in these tests).
  ops::zero_all_(gd);
  for (const Tensor& t : gd) EXPECT_EQ(frob(to_host(t)), 0.0);
}
#endif
