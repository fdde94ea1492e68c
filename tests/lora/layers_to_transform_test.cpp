// PEFT's layers_to_transform / layers_pattern (`train --layers-to-transform`): LoRA on some blocks
// only, chosen by the block index in the module path, with check_target_module_exists' rules.
#include <gtest/gtest.h>

#include <set>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

lora::LoraConfig config(const nlohmann::json& extra) {
  nlohmann::json j = {{"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "up_proj", "w1", "c_attn", "lm_head"}}};
  j.update(extra);
  return lora::LoraConfig::from_json(j, "adapter_config.json");
}

std::set<std::string> modules_of(const lora::Adapter& a) {
  std::set<std::string> out;
  for (const auto& p : a.pairs) out.insert(p.module);
  return out;
}

TEST(LayersToTransform, BlockIndexIsTheFirstNumberedSegment) {
  const auto one = config({{"layers_to_transform", 3}});  // an int: that block only
  EXPECT_TRUE(one.targets("model.layers.3.mlp.up_proj"));
  EXPECT_FALSE(one.targets("model.layers.2.mlp.up_proj"));
  EXPECT_FALSE(one.targets("model.layers.13.mlp.up_proj"));
  EXPECT_FALSE(one.targets("model.layers.3.mlp.down_proj"));  // not a target at all
  // Lazy: the block's index, not the expert's inside it.
  const auto list = config({{"layers_to_transform", {0, 1}}});
  EXPECT_TRUE(list.targets("model.layers.1.mlp.experts.5.w1"));
  EXPECT_FALSE(config({{"layers_to_transform", {5}}}).targets("model.layers.1.mlp.experts.5.w1"));
  EXPECT_TRUE(list.targets("transformer.h.0.attn.c_attn"));  // GPT-2's blocks are "h"
  // A pattern names the blocks' list.
  const auto h = config({{"layers_to_transform", {0}}, {"layers_pattern", "h"}});
  EXPECT_TRUE(h.targets("transformer.h.0.attn.c_attn"));
  EXPECT_FALSE(h.targets("model.layers.0.self_attn.q_proj"));
  const auto either = config({{"layers_to_transform", {0}}, {"layers_pattern", {"blocks", "layers"}}});
  EXPECT_TRUE(either.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(config({{"layers_to_transform", {0}}, {"layers_pattern", ""}}).targets("model.layers.0.self_attn.q_proj"));
  // A name matched as a suffix outside any block has no index; the whole path listed is taken as it is.
  EXPECT_TRUE(list.targets_outside_blocks("lm_head"));
  lora::LoraConfig embed = config({{"target_modules", {"embed_tokens"}}, {"layers_to_transform", {0}}});
  EXPECT_FALSE(embed.targets_outside_blocks("model.embed_tokens"));
  EXPECT_TRUE(config({{"target_modules", {"embed_tokens"}}}).targets_outside_blocks("model.embed_tokens"));
  // An empty list is PEFT's "every layer".
  EXPECT_TRUE(config({{"layers_to_transform", nlohmann::json::array()}}).targets("model.layers.7.mlp.up_proj"));
}

TEST(LayersToTransform, ConfigRoundTripsAndBadValuesAreErrors) {
  const auto c = config({{"layers_to_transform", {1, 3}}, {"layers_pattern", "layers"}});
  const auto j = c.to_json();
  EXPECT_EQ(j["layers_to_transform"], nlohmann::json({1, 3}));
  EXPECT_EQ(j["layers_pattern"], nlohmann::json({"layers"}));
  const auto back = lora::LoraConfig::from_json(j, "back");
  EXPECT_EQ(back.layers_to_transform, c.layers_to_transform);
  EXPECT_EQ(back.layers_pattern, c.layers_pattern);
  EXPECT_TRUE(lora::LoraConfig().to_json()["layers_to_transform"].is_null());
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"layers_to_transform", "0"}}, "integer"},
      {{{"layers_to_transform", {0.5}}}, "integer"},
      {{{"layers_to_transform", {-1}}}, "negative"},
      {{{"layers_pattern", "layers"}}, "needs layers_to_transform"},
      {{{"layers_pattern", {3}}, {"layers_to_transform", {0}}}, "layers_pattern must be"},
      {{{"target_modules", ".*q_proj"}, {"layers_to_transform", {0}}}, "regular expression"},
  };
  for (const auto& [extra, why] : bad) {
    try {
      config(extra);
      ADD_FAILURE() << extra.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  const auto broken = config({{"layers_to_transform", {0}}, {"layers_pattern", "la(yers"}});
  EXPECT_THROW(broken.targets("model.layers.0.mlp.up_proj"), Error);
}

// Created on some blocks, saved in PEFT's form, loaded back as the same modules; a file with a
// tensor of a block the config leaves out is refused (PEFT would not have made it).
TEST(LayersToTransform, AdapterOnSomeBlocksSavesAndLoads) {
  const std::string dir = test::model_fixture("llama");  // two blocks
  model::Model m = model::Model::load(dir);
  lora::LoraConfig c;
  c.set_targets("q_proj,v_proj");
  c.layers_to_transform = {1};
  Rng rng(2);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  EXPECT_EQ(modules_of(a), (std::set<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
  io::testing::ScratchDir d;
  a.save(d.file("one"));
  auto cfg = io::read_json(d.file("one") + "/adapter_config.json");
  EXPECT_EQ(cfg["layers_to_transform"], nlohmann::json({1}));
  model::Model fresh = model::Model::load(dir);
  EXPECT_EQ(modules_of(lora::Adapter::load(d.file("one"), fresh)), modules_of(a));
  const auto shown = test::run_cli("inspect " + d.file("one"));
  EXPECT_EQ(shown.code, 0) << shown.err;
  EXPECT_NE(shown.out.find("layers_to_transform      [1]"), std::string::npos) << shown.out;
  EXPECT_EQ(shown.out.find("layers_pattern"), std::string::npos) << shown.out;  // unset: not shown

  // all-linear on some blocks: PEFT takes layers_to_transform with a list of names only.
  lora::LoraConfig all;
  all.set_targets("all-linear");
  all.layers_to_transform = {0};
  lora::Adapter b = lora::Adapter::create(m, all, rng);
  EXPECT_EQ(b.pairs.size(), 7u);
  for (const auto& p : b.pairs) EXPECT_EQ(p.layer, 0) << p.module;
  b.save(d.file("all"));
  cfg = io::read_json(d.file("all") + "/adapter_config.json");
  EXPECT_EQ(cfg["target_modules"],
            nlohmann::json({"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}));
  EXPECT_EQ(modules_of(lora::Adapter::load(d.file("all"), fresh)), modules_of(b));

  // The config narrowed to block 0 while the file holds block 1's tensors.
  cfg = io::read_json(d.file("one") + "/adapter_config.json");
  cfg["layers_to_transform"] = {0};
  io::write_json_atomic(d.file("one") + "/adapter_config.json", cfg);
  try {
    lora::Adapter::load(d.file("one"), fresh);
    ADD_FAILURE() << "an adapter with tensors outside layers_to_transform was loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers_to_transform"), std::string::npos) << e.what();
  }
  // No block with that index: nothing to adapt.
  c.layers_to_transform = {9};
  EXPECT_THROW(lora::Adapter::create(m, c, rng), Error);
}

}  // namespace
