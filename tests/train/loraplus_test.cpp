// LoRA+ (`train --loraplus-lr-ratio`): PEFT's create_loraplus_optimizer groups, each with its own
// learning rate under one schedule and one AdamW step count.
#include "lowrank/train/loraplus.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/core/error.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/train/step.h"
#include "test_paths.h"

using namespace lowrank;
using namespace lowrank::train;

namespace {

ParamRef param(const std::string& name, std::vector<float> value, std::vector<float> grad, double scale,
               bool decay = true) {
  const int64_t n = static_cast<int64_t>(value.size());
  ParamRef p{name, Tensor::from_vector(value, {n}), Tensor::from_vector(grad, {n}), decay};
  p.lr_scale = scale;
  return p;
}

// A tensor with lr_scale s under lr is the same AdamW (bits and all) as one with scale 1 under
// lr * s: the groups share the step count and nothing else.
TEST(LoraPlus, ScaledParamStepsAsItsOwnOptimizerWithScaledLr) {
  AdamWConfig cfg;
  cfg.weight_decay = 0.01;
  AdamW both(cfg);
  std::vector<ParamRef> grouped = {param("a", {0.5f, -1.0f}, {0.1f, 0.2f}, 1.0),
                                   param("b", {0.25f, 2.0f}, {-0.3f, 0.05f}, 16.0),
                                   param("bias", {1.0f, 1.5f}, {0.2f, -0.1f}, 16.0, false)};
  AdamW plain(cfg), fast(cfg);
  std::vector<ParamRef> alone_a = {param("a", {0.5f, -1.0f}, {0.1f, 0.2f}, 1.0)};
  std::vector<ParamRef> alone_b = {param("b", {0.25f, 2.0f}, {-0.3f, 0.05f}, 1.0),
                                   param("bias", {1.0f, 1.5f}, {0.2f, -0.1f}, 1.0, false)};
  for (const double lr : {1e-2, 3e-3, 0.0, 5e-3}) {
    both.step(grouped, lr);
    plain.step(alone_a, lr);
    fast.step(alone_b, lr * 16.0);
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(grouped[0].param.f32()[i], alone_a[0].param.f32()[i]);
    EXPECT_EQ(grouped[1].param.f32()[i], alone_b[0].param.f32()[i]);
    EXPECT_EQ(grouped[2].param.f32()[i], alone_b[1].param.f32()[i]);
  }
  EXPECT_NE(grouped[0].param.f32()[0], 0.5f);
  EXPECT_EQ(both.steps(), 4);
}

TEST(LoraPlus, InvalidScaleIsRefusedBeforeAnythingChanges) {
  AdamW opt(AdamWConfig{});
  std::vector<ParamRef> params = {param("a", {1.0f}, {0.5f}, 1.0), param("b", {1.0f}, {0.5f}, 0.0)};
  EXPECT_THROW(opt.step(params, 1e-3), Error);
  params[1].lr_scale = NAN;
  EXPECT_THROW(opt.step(params, 1e-3), Error);
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_EQ(params[0].param.f32()[0], 1.0f);
}

std::map<std::string, const ParamRef*> by_suffix(const std::vector<ParamRef>& params, const std::string& module) {
  std::map<std::string, const ParamRef*> out;
  for (const ParamRef& p : params)
    if (p.name.rfind(module + ".", 0) == 0) out[p.name.substr(module.size() + 1)] = &p;
  return out;
}

// PEFT's groups: an embedding adapter's two tensors at lr_embedding, lora_B and 1-D tensors at
// lr * ratio (biases without weight decay), lora_A at lr.
TEST(LoraPlus, GroupsFollowPeft) {
  model::Model m = model::Model::load(test::model_fixture("qwen2"));  // q/k/v carry biases
  lora::LoraConfig c;
  c.set_targets("q_proj,v_proj,embed_tokens,lm_head");
  c.bias = lora::BiasMode::All;
  Rng rng(1);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  a.allocate_grads();
  auto params = lora_params(a);
  LoraPlusConfig off;
  apply_loraplus(params, off, 2e-4);
  for (const ParamRef& p : params) EXPECT_EQ(p.lr_scale, 1.0) << p.name;
  LoraPlusConfig on;
  on.lr_ratio = 16;
  on.lr_embedding = 1e-5;
  apply_loraplus(params, on, 2e-4);
  const auto q = by_suffix(params, "model.layers.0.self_attn.q_proj");
  ASSERT_TRUE(q.count("lora_A") && q.count("lora_B") && q.count("bias"));
  EXPECT_EQ(q.at("lora_A")->lr_scale, 1.0);
  EXPECT_TRUE(q.at("lora_A")->decay);
  EXPECT_EQ(q.at("lora_B")->lr_scale, 16.0);
  EXPECT_TRUE(q.at("lora_B")->decay);
  EXPECT_EQ(q.at("bias")->lr_scale, 16.0);
  EXPECT_FALSE(q.at("bias")->decay);
  const auto head = by_suffix(params, "lm_head");  // a linear layer: A and B as any other
  EXPECT_EQ(head.at("lora_A")->lr_scale, 1.0);
  EXPECT_EQ(head.at("lora_B")->lr_scale, 16.0);
  const auto embed = by_suffix(params, "model.embed_tokens");
  ASSERT_EQ(embed.size(), 2u);
  for (const auto& [name, p] : embed) {
    EXPECT_DOUBLE_EQ(p->lr_scale, 1e-5 / 2e-4) << name;
    EXPECT_TRUE(p->decay) << name;
  }

  lora::LoraConfig dora;
  dora.set_targets("v_proj");
  dora.use_dora = true;
  lora::Adapter d = lora::Adapter::create(m, dora, rng);
  d.allocate_grads();
  auto dp = lora_params(d);
  apply_loraplus(dp, on, 2e-4);
  const auto v = by_suffix(dp, "model.layers.1.self_attn.v_proj");
  EXPECT_EQ(v.at("lora_magnitude_vector")->lr_scale, 16.0);  // 1-D: B's group, with decay
  EXPECT_TRUE(v.at("lora_magnitude_vector")->decay);
}

TEST(LoraPlus, BadFlagsAreErrors) {
  LoraPlusConfig c;
  EXPECT_NO_THROW(c.validate(false));
  c.lr_embedding = 1e-4;
  EXPECT_THROW(c.validate(false), Error);  // an embedding lr without LoRA+
  c.lr_ratio = 16;
  EXPECT_NO_THROW(c.validate(false));
  EXPECT_THROW(c.validate(true), Error);  // --full has no A and B
  c.lr_embedding = -1;
  EXPECT_THROW(c.validate(false), Error);
  c.lr_embedding.reset();
  for (const double bad : {-2.0, double(NAN), double(INFINITY)}) {
    c.lr_ratio = bad;
    EXPECT_THROW(c.validate(false), Error) << bad;
  }
}

// Through `lowrank train`: one AdamW step moves each element by about its lr (Adam's first step is
// lr * g / |g|). B starts at zero, so after one step its largest value is B's lr; A has no
// gradient yet (B = 0) and stays; the embedding adapter's A (PEFT starts it at zero) moves by the
// embedding lr.
TEST(LoraPlus, TrainGivesBAndTheEmbeddingTheirLearningRates) {
  const std::string model = test::model_fixture("llama");
  io::testing::ScratchDir d;
  auto run = [&](const std::string& out, const std::string& flags) {
    auto r = test::run_cli("train --model " + model + " --data " + model + "/eval.jsonl --out " + out +
                           " --targets q_proj,embed_tokens --rank 4 --dropout 0 --batch-size 2 --seq-len 16"
                           " --steps 1 --schedule constant --lr 1e-2 --max-grad-norm 0 --quiet" + flags);
    EXPECT_EQ(r.code, 0) << r.err;
    return out + "/adapter_model.safetensors";
  };
  using io::testing::largest_abs;
  const std::string plain_file = run(d.file("plain"), "");
  EXPECT_NEAR(largest_abs(plain_file, "q_proj.lora_B"), 1e-2, 1e-5);
  EXPECT_NEAR(largest_abs(plain_file, "lora_embedding_A"), 1e-2, 1e-5);
  const std::string plus_file = run(d.file("plus"), " --loraplus-lr-ratio 4 --loraplus-lr-embedding 1e-3");
  EXPECT_NEAR(largest_abs(plus_file, "q_proj.lora_B"), 4e-2, 4e-5);
  EXPECT_NEAR(largest_abs(plus_file, "lora_embedding_A"), 1e-3, 1e-6);
  const auto plain = io::SafetensorsFile::open(plain_file);
  const auto plus = io::SafetensorsFile::open(plus_file);
  // A: unchanged from its init, the same in both runs (same seed).
  for (const auto& info : plain.tensors()) {
    if (info.name.find("q_proj.lora_A") == std::string::npos) continue;
    Tensor x = plain.get(info.name).to(DType::F32), y = plus.get(info.name).to(DType::F32);
    for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x.f32()[i], y.f32()[i]) << info.name;
  }
  auto bad = test::run_cli("train --model " + model + " --data " + model + "/eval.jsonl --out " + d.file("bad") +
                           " --full --loraplus-lr-ratio 16 --steps 1 --quiet");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("error: --loraplus-lr-ratio"), std::string::npos) << bad.err;
}

}  // namespace
