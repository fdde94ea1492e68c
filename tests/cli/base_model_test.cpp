// The bundled base model (models/base, docs/base-model.md) stays usable: it loads, its tokenizer
// adds bos and round-trips text, it scores English better than Bible text it never saw, and it
// generates. Skipped when the folder is absent.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"

using namespace lowrank;

namespace {

std::string base_dir() { return test::source_dir() + "/models/base"; }

TEST(BaseModel, LoadsTokenizesScoresAndGenerates) {
  if (!std::filesystem::exists(base_dir() + "/config.json")) GTEST_SKIP() << "no models/base";
  auto r = test::run_cli("inspect " + base_dir());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("LlamaForCausalLM"), std::string::npos) << r.out;

  r = test::run_cli("tokenize --tokenizer " + base_dir() + " --text 'The function returns a list.' --add-special-tokens");
  ASSERT_EQ(r.code, 0) << r.err;
  auto ids = nlohmann::json::parse(r.out);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 0);  // <|begin_of_text|>

  // Mean loss per token: ordinary technical English (like the pretraining data) is far more
  // likely than King James English, which the model never saw.
  io::testing::ScratchDir d;
  auto encode = [&](const std::string& text) {
    auto t = test::run_cli("tokenize --tokenizer " + base_dir() + " --add-special-tokens --text '" + text + "'");
    EXPECT_EQ(t.code, 0) << t.err;
    auto j = nlohmann::json::parse(t.out);
    j.push_back(1);  // <|end_of_text|>
    return nlohmann::json{{"input_ids", j}}.dump() + "\n";
  };
  const std::string english = d.write("english.jsonl",
      encode("The function returns a pointer to the new string, or NULL if there is not enough memory.") +
      encode("If the file does not exist, it is created with the given permissions."));
  const std::string kjv = d.write("kjv.jsonl",
      encode("And the LORD spake unto Moses, saying, Speak unto the children of Israel, that they bring me an offering.") +
      encode("Thou shalt not take the name of the LORD thy God in vain; for the LORD will not hold him guiltless."));
  auto le = test::run_cli("eval --json --model " + base_dir() + " --data " + english);
  auto lk = test::run_cli("eval --json --model " + base_dir() + " --data " + kjv);
  ASSERT_EQ(le.code, 0) << le.err;
  ASSERT_EQ(lk.code, 0) << lk.err;
  const double loss_en = nlohmann::json::parse(le.out)["loss"], loss_kjv = nlohmann::json::parse(lk.out)["loss"];
  EXPECT_LT(loss_en, 4.0);
  EXPECT_LT(loss_en + 1.0, loss_kjv);

  r = test::run_cli("generate --model " + base_dir() + " --prompt 'The function' --max-new-tokens 8 --greedy");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
}

}  // namespace
