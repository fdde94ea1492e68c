// Embedding gather / scatter-add and RoPE on the GPU against the CPU.
#ifdef LOWRANK_WITH_CUDA
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "lowrank/ops/ops.h"

using namespace lowrank;
using namespace lowrank::test;

namespace {
Tensor ids_tensor(const std::vector<int32_t>& v, Device d) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t.to(d);
}
std::vector<int32_t> random_ids(int n, int V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(rng.below(V));
  v[0] = V - 1;
  if (n > 3) v[3] = v[1];  // a repeated id: the backward must add both rows
  return v;
}
}  // namespace

TEST(CudaIndexed, EmbeddingGatherIsExactAndScatterAddMatches) {
  LR_REQUIRE_GPU();
  for (DType t : float_types()) {
    const int V = 1003, d = 70, n = 517;
    Tensor table = random_cpu({V, d}, 1), dy = random_cpu({n, d}, 2), g0 = random_cpu({V, d}, 3);
    const std::vector<int32_t> ids = random_ids(n, V, 4);
    Tensor ref = cpu::embedding(rounded(table, t), ids);
    Tensor tab = to_gpu(table, t);
    EXPECT_EQ(rel_err(ops::embedding(tab, ids), ref), 0.0) << name(t);
    EXPECT_EQ(rel_err(ops::embedding(tab, ids_tensor(ids, gpu())), ref), 0.0) << name(t);
    EXPECT_THROW(ops::embedding(tab, std::vector<int32_t>{0, V}), Error);

    Tensor gref = g0.clone();
    cpu::embedding_backward_(gref, ids, rounded(dy, t));
    Tensor g = g0.to(gpu()), g2 = g0.to(gpu());
    ops::embedding_backward_(g, ids, to_gpu(dy, t));
    ops::embedding_backward_(g2, ids_tensor(ids, gpu()), to_gpu(dy, t));
    EXPECT_LE(rel_err(g, gref), kTolF32) << name(t);
    EXPECT_LE(rel_err(g2, gref), kTolF32) << name(t);
  }
}

TEST(CudaIndexed, RopeForwardAndInverse) {
  LR_REQUIRE_GPU();
  // head_dim 64 and 128 take the 16-byte path (bf16 and f32), 12 the scalar one; rotary_dim below
  // head_dim is partial rotary (Phi-3): 32 of 64 and 64 of 96 vectorised, 8 of 12 scalar.
  for (const auto [hd, rotary] : {std::pair<int64_t, int64_t>{64, 64}, {128, 128}, {12, 12}, {64, 32}, {96, 64},
                                  {12, 8}}) {
    SCOPED_TRACE(testing::Message() << "head_dim " << hd << " rotary_dim " << rotary);
    const int64_t n = 77, heads = 6, P = 300, half = rotary / 2;
    Tensor cos = Tensor::empty({P, half}), sin = Tensor::empty({P, half});
    for (int64_t p = 0; p < P; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double a = p * std::pow(10000.0, -2.0 * i / rotary);
        cos.f32()[p * half + i] = static_cast<float>(std::cos(a));
        sin.f32()[p * half + i] = static_cast<float>(std::sin(a));
      }
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>((i * 37 + 5) % P);  // not contiguous
    for (DType t : float_types())
      for (bool inverse : {false, true}) {
        Tensor x = random_cpu({n, heads * hd}, 9);
        Tensor ref = rounded(x, t).clone();
        cpu::rope_(ref, heads, pos, cos, sin, inverse);
        Tensor xd = to_gpu(x, t), xd2 = to_gpu(x, t);
        ops::rope_(xd, heads, pos, cos.to(gpu()), sin.to(gpu()), inverse);
        ops::rope_(xd2, heads, ids_tensor(pos, gpu()), cos.to(gpu()), sin.to(gpu()), inverse);
        EXPECT_LE(rel_err(xd, ref), tol_for(t)) << name(t) << " inverse " << inverse;
        EXPECT_LE(rel_err(xd2, ref), tol_for(t)) << name(t) << " inverse " << inverse;
      }
  }
}
#endif
