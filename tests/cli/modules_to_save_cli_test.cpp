// `train --modules-to-save embed_tokens,lm_head` (PEFT's modules_to_save): the adapter carries the
// trained copies under PEFT's names, evaluates (and, merged, the model evaluates) to what training
// reported, resumes after a kill to the same bits, and bad combinations are refused.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/train/metrics.h"

using namespace lowrank;

namespace {

std::string args(const std::string& out) {
  const std::string model = test::model_fixture("llama");
  return "train --model " + model + " --data " + model + "/eval.jsonl --out " + out +
         " --targets q_proj,v_proj --modules-to-save embed_tokens,lm_head --rank 4 --dropout 0 --batch-size 2 --lr 5e-3 "
         "--warmup 1 --quiet";
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  float d = 0;
  for (int64_t i = 0; i < a.numel(); ++i) d = std::max(d, std::fabs(a.f32()[i] - b.f32()[i]));
  return d;
}

TEST(ModulesToSaveCli, TrainsSavesAndEvaluatesThePeftForm) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  auto r = test::run_cli(args(d.file("run")) + " --steps 8 --eval-data " + model + "/eval.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  auto cfg = io::read_json(d.file("run/adapter_config.json"));
  EXPECT_EQ(cfg["modules_to_save"], nlohmann::json({"embed_tokens", "lm_head"}));
  auto adapter = io::SafetensorsFile::open(d.file("run/adapter_model.safetensors"));
  auto base = io::SafetensorsFile::open(model + "/model.safetensors");
  for (const std::string name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    ASSERT_TRUE(adapter.contains("base_model.model." + name)) << name;
    const Tensor copy = adapter.get("base_model.model." + name), original = base.get(name).to(DType::F32);
    ASSERT_EQ(copy.shape(), original.shape()) << name;
    EXPECT_GT(max_abs_diff(copy, original), 1e-3f) << name << " was trained";
  }
  // The adapter (its copies applied) evaluates to what training reported, and beats the base.
  auto metrics = train::read_metrics(d.file("run/metrics.jsonl"));
  auto e = test::run_cli("eval --model " + model + " --data " + model + "/eval.jsonl --json --adapter " + d.file("run"));
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(), metrics.back()["eval_loss"].get<double>(), 1e-6);
  EXPECT_LT(metrics.back()["eval_loss"].get<double>(), metrics.front()["eval_loss"].get<double>() - 0.5);
  // Merged into the base, the copies replace its layers: the merged model evaluates the same.
  auto m = test::run_cli("merge --model " + model + " --adapter " + d.file("run") + " --out " + d.file("merged"));
  ASSERT_EQ(m.code, 0) << m.err;
  auto em = test::run_cli("eval --model " + d.file("merged") + " --data " + model + "/eval.jsonl --json");
  ASSERT_EQ(em.code, 0) << em.err;
  EXPECT_NEAR(nlohmann::json::parse(em.out)["loss"].get<double>(), metrics.back()["eval_loss"].get<double>(), 1e-5);
}

TEST(ModulesToSaveCli, KillAndResumeEqualsUninterruptedRun) {
  io::testing::ScratchDir d;
  auto straight = test::run_cli(args(d.file("straight")) + " --steps 6 --save-every 2");
  ASSERT_EQ(straight.code, 0) << straight.err;
  auto killed = test::run_cli(args(d.file("resumed")) + " --steps 6 --save-every 2", "LOWRANK_TEST_KILL_AFTER_STEP=5");
  EXPECT_EQ(killed.code, 128 + 9) << killed.err;
  auto resumed = test::run_cli(args(d.file("resumed")) + " --steps 6 --save-every 2 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_EQ(io::read_file(d.file("straight/adapter_model.safetensors")),
            io::read_file(d.file("resumed/adapter_model.safetensors")));
  // Another modules_to_save is another run: refused, not resumed.
  auto other = test::run_cli(args(d.file("resumed")) + " --steps 6 --resume --modules-to-save lm_head");
  EXPECT_EQ(other.code, 2) << other.err;
  EXPECT_NE(other.err.find("cannot resume"), std::string::npos) << other.err;
}

TEST(ModulesToSaveCli, BadCombinationsAreRefused) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  const std::string run = "train --model " + model + " --data " + model + "/eval.jsonl --steps 1 --quiet --out " + d.file("x");
  for (const auto& [flags, says] : std::vector<std::pair<std::string, std::string>>{
           {" --modules-to-save q_proj", "q_proj"},
           {" --modules-to-save norm", "neither the embedding nor the output layer"},
           {" --targets q_proj,lm_head --modules-to-save lm_head", "adapted by --targets too"},
           {" --full --modules-to-save lm_head", "--full"},
           {" --device cuda --modules-to-save lm_head", "error:"},
       }) {
    auto r = test::run_cli(run + flags);
    EXPECT_EQ(r.code, 2) << flags << ": " << r.err;
    EXPECT_NE(r.err.find("error:"), std::string::npos) << flags << ": " << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << flags << ": " << r.err;
  }
}

}  // namespace
