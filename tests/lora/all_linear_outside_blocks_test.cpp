// `--targets all-linear,lm_head` (or with the embedding): every linear layer of the blocks and the
// named layers outside them. PEFT's all-linear leaves those out and has no form for the pair, so the
// adapter lists the adapted modules' names, which select the same modules when loaded back.
#include <gtest/gtest.h>

#include <set>

#include "io/io_test_helpers.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

lora::LoraConfig with_targets(const std::string& text) {
  lora::LoraConfig c;
  c.set_targets(text);
  return c;
}

std::set<std::string> modules_of(const lora::Adapter& a) {
  std::set<std::string> out;
  for (const auto& p : a.pairs) out.insert(p.module);
  return out;
}

std::string error_of(model::Model& m, const std::string& targets) {
  Rng rng(1);
  try {
    lora::Adapter::create(m, with_targets(targets), rng);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(AllLinearOutsideBlocks, TargetsFlagSplitsAllLinearFromTheLayersNamedWithIt) {
  const auto both = with_targets("all-linear,embed_tokens,lm_head");
  EXPECT_TRUE(both.all_linear);
  EXPECT_TRUE(both.target_modules.empty());
  EXPECT_EQ(both.outside_blocks, (std::vector<std::string>{"embed_tokens", "lm_head"}));
  EXPECT_TRUE(both.targets_outside_blocks("lm_head"));
  EXPECT_TRUE(both.targets_outside_blocks("model.embed_tokens"));
  const auto alone = with_targets("all-linear");
  EXPECT_TRUE(alone.all_linear);
  EXPECT_FALSE(alone.targets_outside_blocks("lm_head"));  // PEFT's all-linear: the blocks only
  EXPECT_EQ(alone.to_json()["target_modules"], "all-linear");
  // The run's identity tells the two apart (a resume must not switch between them).
  EXPECT_NE(both.to_json()["target_modules"], alone.to_json()["target_modules"]);
  const auto named = with_targets("q_proj,lm_head");
  EXPECT_FALSE(named.all_linear);
  EXPECT_TRUE(named.targets_outside_blocks("lm_head"));
  EXPECT_FALSE(named.targets_outside_blocks("model.embed_tokens"));
  EXPECT_FALSE(with_targets("none").has_targets());
  EXPECT_THROW(with_targets(","), Error);
}

// GPT-2's layout: tied embeddings, Conv1D layers, the embedding named transformer.wte.
TEST(AllLinearOutsideBlocks, AdaptsTheBlocksAndTheOutputLayerAndSavesTheirNames) {
  const std::string dir = test::model_fixture("gpt2");
  model::Model m = model::Model::load(dir);
  Rng rng(3);
  lora::Adapter blocks = lora::Adapter::create(m, with_targets("all-linear"), rng);
  lora::Adapter a = lora::Adapter::create(m, with_targets("all-linear,lm_head"), rng);
  std::set<std::string> want = modules_of(blocks);
  want.insert("lm_head");
  EXPECT_EQ(modules_of(a), want);
  for (auto& p : a.pairs)  // B starts at zero: give it values that a wrong load would lose
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = 0.01f * static_cast<float>(i % 5 + 1);
  io::testing::ScratchDir d;
  a.save(d.file("adapter"));
  const auto cfg = io::read_json(d.file("adapter") + "/adapter_config.json");
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"c_attn", "c_fc", "c_proj", "lm_head"}));
  model::Model fresh = model::Model::load(dir);
  lora::Adapter back = lora::Adapter::load(d.file("adapter"), fresh);
  EXPECT_EQ(modules_of(back), want);
  for (const auto& p : a.pairs) {
    const lora::LoraPair* q = back.find(p.layer, p.target);
    ASSERT_NE(q, nullptr) << p.module;
    for (int64_t i = 0; i < p.B.numel(); ++i) ASSERT_EQ(q->B.f32()[i], p.B.f32()[i]) << p.module;
  }
  // The embedding by its own name works; a name it does not have, or a block's layer, is an error.
  lora::Adapter wte = lora::Adapter::create(m, with_targets("all-linear,wte"), rng);
  EXPECT_EQ(modules_of(wte).count("transformer.wte"), 1u);
  EXPECT_NE(error_of(m, "all-linear,embed_tokens").find("transformer.wte"), std::string::npos);
  EXPECT_NE(error_of(m, "all-linear,c_attn").find("all-linear already adapts"), std::string::npos);
}

}  // namespace
