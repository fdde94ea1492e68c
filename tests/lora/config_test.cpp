// PEFT's module matching: target_modules and exclude_modules as names, paths or one regex
// (re.fullmatch), and rank_pattern / alpha_pattern keys as names or regexes matched at the end of
// the path.
#include "lowrank/lora/config.h"

#include <gtest/gtest.h>

#include "lowrank/core/error.h"

using namespace lowrank;
using namespace lowrank::lora;

namespace {

LoraConfig config_from(const char* json) { return LoraConfig::from_json(nlohmann::json::parse(json), "test"); }

}  // namespace

TEST(LoraConfig, TargetModulesAsNamesPathsAndRegex) {
  auto names = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})");
  EXPECT_TRUE(names.targets("model.layers.3.self_attn.q_proj"));
  EXPECT_FALSE(names.targets("model.layers.3.self_attn.k_proj"));
  EXPECT_FALSE(names.targets("model.layers.3.self_attn.xq_proj"));  // a name matches whole path parts
  auto regex = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                               "target_modules": ".*layers\\.(0|2)\\.self_attn\\.(q|v)_proj"})");
  EXPECT_TRUE(regex.targets("model.layers.2.self_attn.v_proj"));
  EXPECT_FALSE(regex.targets("model.layers.1.self_attn.v_proj"));
  EXPECT_FALSE(regex.targets("model.layers.2.self_attn.v_proj.extra"));  // fullmatch, not search
  auto bad = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "layers.(0"})");
  try {
    bad.targets("model.layers.0.self_attn.q_proj");
    ADD_FAILURE() << "an invalid regex must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid regular expression"), std::string::npos) << e.what();
  }
}

// exclude_modules takes modules out of what target_modules (all-linear too) selects, as PEFT's
// check_target_module_exists does; it survives the round trip through adapter_config.json.
TEST(LoraConfig, ExcludeModulesAsNamesOrRegex) {
  auto names = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                               "exclude_modules": ["down_proj", "layers.1.self_attn.q_proj"]})");
  EXPECT_TRUE(names.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(names.targets("model.layers.1.self_attn.q_proj"));
  EXPECT_FALSE(names.targets("model.layers.0.mlp.down_proj"));
  EXPECT_TRUE(names.targets("model.layers.0.mlp.up_proj"));
  const LoraConfig again = LoraConfig::from_json(names.to_json(), "again");
  EXPECT_FALSE(again.targets("model.layers.0.mlp.down_proj"));
  EXPECT_TRUE(again.targets("model.layers.0.mlp.up_proj"));
  auto regex = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                               "exclude_modules": ".*layers\\.0\\..*"})");
  EXPECT_FALSE(regex.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(regex.targets("model.layers.10.self_attn.q_proj"));
  EXPECT_TRUE(LoraConfig::from_json(regex.to_json(), "again").targets("model.layers.2.self_attn.v_proj"));
  EXPECT_FALSE(LoraConfig::from_json(regex.to_json(), "again").targets("model.layers.0.self_attn.v_proj"));
  for (const char* json : {R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "exclude_modules": [1]})",
                           R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "exclude_modules": 3})"})
    EXPECT_THROW((void)LoraConfig::from_json(nlohmann::json::parse(json), "adapter_config.json"), Error) << json;
}

TEST(LoraConfig, RankAndAlphaPatternsMatchNamesAndRegexesAtTheEnd) {
  auto c = config_from(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                          "rank_pattern": {"layers.1.self_attn.q_proj": 4, "^.*\\.v_p.oj": 2, "(": 99},
                          "alpha_pattern": {"v_proj": 3}})");
  EXPECT_EQ(c.rank_for("model.layers.1.self_attn.q_proj"), 4);
  EXPECT_EQ(c.rank_for("model.layers.0.self_attn.q_proj"), 8);
  EXPECT_EQ(c.rank_for("model.layers.0.self_attn.v_proj"), 2);  // a regex key
  EXPECT_EQ(c.alpha_for("model.layers.0.self_attn.v_proj"), 3.0);
  EXPECT_EQ(c.alpha_for("model.layers.0.self_attn.q_proj"), 16.0);
}

// A value of another JSON type than the key needs (found by fuzz_configs: "peft_type": true) is
// an Error naming the file, not nlohmann's type_error.
TEST(LoraConfig, ValuesOfTheWrongTypeAreErrors) {
  for (const char* json : {R"({"peft_type": true, "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})",
                           R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [1, 2]})",
                           R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": "x"}})"}) {
    try {
      (void)LoraConfig::from_json(nlohmann::json::parse(json), "adapter_config.json");
      ADD_FAILURE() << "accepted: " << json;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("adapter_config.json: ", 0), 0u) << e.what();
    }
  }
}
