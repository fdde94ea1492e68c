// The CPU's product with a bf16 weight (Quantization::KeepBf16) against the f32 product of the same
// values, for the one-pass path (up to 4 rows) and the widened-blocks path; and a bf16 checkpoint
// loaded with KeepBf16 computes transformers' logits as its f32 load does.
#include <gtest/gtest.h>

#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "lowrank/core/rng.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/model.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

Tensor bf16_values(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.normal();
  return t.to(DType::BF16);
}

}  // namespace

TEST(MatmulBf16, EqualsTheF32ProductOfTheSameValues) {
  for (const int64_t M : {1, 3, 4, 5, 17})
    for (const int64_t K : {1, 15, 16, 33, 768})
      for (const int64_t N : {1, 7, 300}) {
        const Tensor w = bf16_values({N, K}, 7 * K + N);
        const Tensor x = bf16_values({M, K}, 3 * M + K).to(DType::F32);
        Tensor want, got;
        cpu::matmul_nt(x, w.to(DType::F32), want, 0.5f, 0.0f);
        cpu::matmul_nt(x, w, got, 0.5f, 0.0f);
        ASSERT_EQ(got.shape(), want.shape());
        for (int64_t i = 0; i < want.numel(); ++i)
          ASSERT_NEAR(got.f32()[i], want.f32()[i], 1e-5 * (std::sqrt(static_cast<double>(K)) + std::fabs(want.f32()[i])))
              << M << "x" << K << "x" << N << " at " << i;
        // beta = 1 adds onto y.
        Tensor acc = want.clone();
        cpu::matmul_nt(x, w, acc, 0.5f, 1.0f);
        for (int64_t i = 0; i < want.numel(); ++i)
          ASSERT_NEAR(acc.f32()[i], 2 * want.f32()[i], 2e-5 * (std::sqrt(static_cast<double>(K)) + std::fabs(want.f32()[i])));
      }
}

TEST(MatmulBf16, ARowsResultDoesNotDependOnTheOtherRows) {
  // Decode is reproducible whatever shares the step: row 0 alone equals row 0 of four rows.
  const Tensor w = bf16_values({64, 96}, 1);
  const Tensor x = bf16_values({4, 96}, 2).to(DType::F32);
  Tensor all, one;
  cpu::matmul_nt(x, w, all);
  cpu::matmul_nt(x.slice_rows(0, 1), w, one);
  for (int64_t n = 0; n < 64; ++n) EXPECT_EQ(one.f32()[n], all.f32()[n]);
}

TEST(MatmulBf16, KeepBf16LoadComputesTransformersLogits) {
  const std::string dir = test::model_fixture("llama_bf16");
  const model::Model f32 = model::Model::load(dir);
  const model::Model kept = model::Model::load(dir, Device::cpu(), DType::F32, model::Quantization::KeepBf16);
  EXPECT_EQ(kept.weights().layers[0].q.weight.dtype(), DType::BF16);
  EXPECT_EQ(kept.weights().layers[0].attn_norm.weight.dtype(), DType::F32);  // only the projections
  EXPECT_EQ(f32.weights().layers[0].q.weight.dtype(), DType::F32);
  const auto ref = io::SafetensorsFile::open(dir + "/expected_logits.safetensors");
  const auto ids = train::read_token_sequences(dir + "/eval.jsonl", kept.config().vocab_size).front();
  const Tensor a = f32.logits({ids, 1, static_cast<int64_t>(ids.size())});
  const Tensor b = kept.logits({ids, 1, static_cast<int64_t>(ids.size())});
  const Tensor want = ref.get("logits.0").to(DType::F32);
  ASSERT_EQ(b.shape(), want.shape());
  float max_ref = 0, max_err = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    EXPECT_NEAR(b.f32()[i], a.f32()[i], 1e-5f * (1 + std::fabs(a.f32()[i])));
    max_ref = std::max(max_ref, std::fabs(want.f32()[i]));
    max_err = std::max(max_err, std::fabs(want.f32()[i] - b.f32()[i]));
  }
  EXPECT_LE(max_err, 1e-4f * max_ref);  // ForwardParity's bound
}

TEST(MatmulBf16, InferenceKeepsF32WhereItFits) {
  // A tiny bf16 checkpoint fits in f32 many times over: f32, the faster product on a machine whose
  // cores bound a decode step; NF4 and CUDA are what they were.
  const std::string dir = test::model_fixture("llama_bf16");
  EXPECT_EQ(model::inference_quantization("none", Device::cpu(), dir), model::Quantization::None);
  EXPECT_EQ(model::inference_quantization("nf4", Device::cpu(), dir), model::Quantization::Nf4);
  EXPECT_EQ(model::inference_quantization("none", Device::cuda(0), dir), model::Quantization::None);
  EXPECT_THROW(model::inference_quantization("int8", Device::cpu(), dir), Error);
}
