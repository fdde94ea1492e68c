// Bias-only training (BitFit: --targets none --bias all): the biases' gradients are exactly those
// that full fine-tuning computes for them, the adapter saves and loads, and what cannot train
// anything is refused.
#include <gtest/gtest.h>

#include <cmath>

#include "io/io_test_helpers.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

lora::LoraConfig bias_only() {
  lora::LoraConfig c;
  c.all_linear = true;
  c.set_targets("none");
  c.bias = lora::BiasMode::All;
  return c;
}

model::TokenBatch batch_of(const std::vector<int32_t>& ids) { return {ids, 2, static_cast<int64_t>(ids.size() / 2)}; }

TEST(BiasOnly, GradientsEqualFullFineTuningsBiasGradients) {
  const std::string dir = test::model_fixture("gpt2");  // Conv1D layers with biases, fused c_attn
  const std::vector<int32_t> ids{1, 5, 9, 13, 2, 7, 3, 11, 4, 8, 6, 10};
  const auto targets = model::shift_labels(ids, 2, 6);

  model::Model m = model::Model::load(dir);
  lora::LoraConfig c = bias_only();
  c.validate("test");
  Rng rng(1);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  ASSERT_TRUE(a.pairs.empty());
  ASSERT_FALSE(a.biases.empty());
  a.attach_biases(m);
  a.allocate_grads();
  lora::LoraHook hook({{&a, 1.0}});
  hook.set_training(true);
  EXPECT_FALSE(hook.draws_randomness());  // no LoRA layer: dropout has nothing to drop
  model::forward_backward(m, batch_of(ids), targets, 1.0f / 10, &hook);

  model::Model full_m = model::Model::load(dir);
  model::ModelWeights g = model::zeros_like(full_m.weights());
  model::forward_backward(full_m, batch_of(ids), targets, 1.0f / 10, nullptr, &g);

  for (const auto& b : a.biases) {
    const model::Linear* want = g.layers[b.layer].projection(b.target);
    ASSERT_TRUE(want && want->bias.defined()) << b.module;
    ASSERT_EQ(b.grad.numel(), want->bias.numel()) << b.module;
    double num = 0, den = 0;
    for (int64_t i = 0; i < b.grad.numel(); ++i) {
      const double d = b.grad.f32()[i] - want->bias.f32()[i];
      num += d * d;
      den += static_cast<double>(want->bias.f32()[i]) * want->bias.f32()[i];
    }
    EXPECT_GT(den, 0) << b.module << ": the full gradient must not vanish";
    EXPECT_LE(std::sqrt(num / den), 1e-5) << b.module;
  }
}

TEST(BiasOnly, SavesAndLoadsAsAnAdapterOfBiases) {
  const std::string dir = test::model_fixture("gpt2");
  model::Model m = model::Model::load(dir);
  Rng rng(1);
  lora::Adapter a = lora::Adapter::create(m, bias_only(), rng);
  for (auto& b : a.biases)
    for (int64_t i = 0; i < b.value.numel(); ++i) b.value.f32()[i] += 0.01f * static_cast<float>(i % 7);
  io::testing::ScratchDir d;
  a.save(d.file("bitfit"));
  model::Model fresh = model::Model::load(dir);
  lora::Adapter back = lora::Adapter::load(d.file("bitfit"), fresh);
  EXPECT_TRUE(back.pairs.empty());
  ASSERT_EQ(back.biases.size(), a.biases.size());
  for (size_t i = 0; i < a.biases.size(); ++i) {
    EXPECT_EQ(back.biases[i].module, a.biases[i].module);
    for (int64_t k = 0; k < a.biases[i].value.numel(); ++k)
      ASSERT_EQ(back.biases[i].value.f32()[k], a.biases[i].value.f32()[k]) << a.biases[i].module;
  }
}

TEST(BiasOnly, WhatTrainsNothingIsRefused) {
  lora::LoraConfig none = bias_only();
  none.bias = lora::BiasMode::None;
  EXPECT_THROW(none.validate("test"), Error);
  none.bias = lora::BiasMode::LoraOnly;  // biases of LoRA layers, of which there are none
  EXPECT_THROW(none.validate("test"), Error);
  // A base whose linear layers have no biases (llama) has nothing for bias-only training.
  model::Model m = model::Model::load(test::model_fixture("llama"));
  Rng rng(1);
  try {
    lora::Adapter::create(m, bias_only(), rng);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no biases"), std::string::npos) << e.what();
  }
}

}  // namespace
