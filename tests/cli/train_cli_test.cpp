// `lowrank train` end to end: output folder, crash safety (kill -9 and --resume give the same bits
// as an uninterrupted run), refusal to resume with other settings, and bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/train/metrics.h"

using namespace lowrank;

namespace {

// `lowrank train` on the llama fixture and its own eval.jsonl into `out` (flags follow).
std::string train_llama(const std::string& out) {
  const std::string model = test::model_fixture("llama");
  return "train --model " + model + " --data " + model + "/eval.jsonl --out " + out;
}

std::string base_args(const std::string& out, int rank = 4) {
  return train_llama(out) + " --targets all-linear --rank " + std::to_string(rank) + " --dropout 0.1 --batch-size 2 --grad-accum 2 --lr 5e-3 --warmup 2 --quiet";
}

TEST(TrainCli, WritesPeftAdapterMetricsAndLowersLoss) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  auto r = test::run_cli(base_args(d.file("run")) + " --steps 12 --eval-data " + model + "/eval.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("trainable params: 7424 || all params: 110144"), std::string::npos) << r.err;
  auto cfg = io::read_json(d.file("run/adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  auto metrics = train::read_metrics(d.file("run/metrics.jsonl"));
  ASSERT_EQ(metrics.size(), 14u);  // eval before, 12 steps, eval after
  EXPECT_LT(metrics.back()["eval_loss"].get<double>(), metrics.front()["eval_loss"].get<double>() - 0.5);
  // The adapter evaluates to what training reported.
  auto e = test::run_cli("eval --model " + model + " --data " + model + "/eval.jsonl --json --adapter " + d.file("run"));
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(), metrics.back()["eval_loss"].get<double>(), 1e-6);
}

TEST(TrainCli, KillAndResumeEqualsUninterruptedRun) {
  io::testing::ScratchDir d;
  auto straight = test::run_cli(base_args(d.file("straight")) + " --steps 6 --save-every 2");
  ASSERT_EQ(straight.code, 0) << straight.err;
  // Killed (SIGKILL) right after step 5: checkpoint-4 is the last complete one.
  auto killed = test::run_cli(base_args(d.file("resumed")) + " --steps 6 --save-every 2",
                              "LOWRANK_TEST_KILL_AFTER_STEP=5");
  EXPECT_EQ(killed.code, 128 + 9) << killed.err;
  ASSERT_TRUE(std::filesystem::exists(d.file("resumed/checkpoint-4/manifest.json")));
  ASSERT_FALSE(std::filesystem::exists(d.file("resumed/adapter_model.safetensors")));
  auto resumed = test::run_cli(base_args(d.file("resumed")) + " --steps 6 --save-every 2 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_EQ(io::read_file(d.file("straight/adapter_model.safetensors")),
            io::read_file(d.file("resumed/adapter_model.safetensors")))
      << "resumed adapter differs from the uninterrupted run";
  auto a = train::read_metrics(d.file("straight/metrics.jsonl"));
  auto b = train::read_metrics(d.file("resumed/metrics.jsonl"));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "step " << a[i]["step"];
  }
}

// --save-total-limit: the two newest checkpoints stay (older ones deleted after the newer one is
// complete) and the run resumes from the newest.
TEST(TrainCli, SaveTotalLimitKeepsTheNewestCheckpoints) {
  io::testing::ScratchDir d;
  auto r = test::run_cli(base_args(d.file("run")) + " --steps 8 --save-every 2 --save-total-limit 2",
                         "LOWRANK_TEST_KILL_AFTER_STEP=7");
  EXPECT_EQ(r.code, 128 + 9) << r.err;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(d.file("run")))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"checkpoint-4", "checkpoint-6"}));
  auto resumed = test::run_cli(base_args(d.file("run")) + " --steps 8 --save-every 2 --save-total-limit 2 --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming from"), std::string::npos) << resumed.err;
  EXPECT_TRUE(std::filesystem::exists(d.file("run/checkpoint-8/manifest.json")));
  EXPECT_FALSE(std::filesystem::exists(d.file("run/checkpoint-4")));
  EXPECT_EQ(test::run_cli(base_args(d.file("x")) + " --steps 1 --save-total-limit -1").code, 2);
}

// --packing trains on joined blocks; a run packed and resumed unpacked (other examples) is refused.
TEST(TrainCli, PackingTrainsAndIsPartOfTheResumeIdentity) {
  io::testing::ScratchDir d;
  auto r = test::run_cli(base_args(d.file("run")) + " --steps 2 --save-every 2 --packing --seq-len 16");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const auto& m : train::read_metrics(d.file("run/metrics.jsonl")))
    if (m.contains("tokens")) EXPECT_EQ(m["tokens"], 2 * 2 * 16) << "full blocks: batch 2, grad-accum 2, 16 positions";
  auto other = test::run_cli(base_args(d.file("run")) + " --steps 4 --save-every 2 --seq-len 16 --resume");
  EXPECT_EQ(other.code, 2) << other.err;
  EXPECT_NE(other.err.find("packing"), std::string::npos) << other.err;
}

TEST(TrainCli, ResumeWithOtherSettingsIsRefused) {
  io::testing::ScratchDir d;
  ASSERT_EQ(test::run_cli(base_args(d.file("run")) + " --steps 2 --save-every 2").code, 0);
  auto r = test::run_cli(base_args(d.file("run"), 8) + " --steps 4 --resume");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("cannot resume"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("checkpoint-2"), std::string::npos) << r.err;
  r = test::run_cli(base_args(d.file("run")) + " --steps 4 --resume --dropout-per-input");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("dropout_per_input"), std::string::npos) << r.err;
  const std::string qwen = test::model_fixture("qwen2");
  r = test::run_cli("train --model " + qwen + " --data " + qwen + "/eval.jsonl --out " + d.file("run") +
                    " --targets all-linear --rank 4 --steps 4 --resume --quiet");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("Qwen2ForCausalLM"), std::string::npos) << r.err;
}

// --dropout-per-input draws other masks (one for q, k, v's input) from the same stream: the first
// step's loss is the same (B = 0: LoRA adds nothing yet), the trained adapter is not.
TEST(TrainCli, DropoutPerInputTrainsWithOtherMasks) {
  io::testing::ScratchDir d;
  ASSERT_EQ(test::run_cli(base_args(d.file("projection")) + " --steps 3").code, 0);
  auto r = test::run_cli(base_args(d.file("input")) + " --steps 3 --dropout-per-input");
  ASSERT_EQ(r.code, 0) << r.err;
  auto a = train::read_metrics(d.file("projection/metrics.jsonl"));
  auto b = train::read_metrics(d.file("input/metrics.jsonl"));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a[0]["loss"], b[0]["loss"]);
  EXPECT_LT(b.back()["loss"].get<double>(), b[0]["loss"].get<double>());
  EXPECT_NE(io::read_file(d.file("projection/adapter_model.safetensors")),
            io::read_file(d.file("input/adapter_model.safetensors")));
  EXPECT_EQ(io::read_json(d.file("input/adapter_config.json")).count("dropout_per_input"), 0u)
      << "not a PEFT key";
}

// A checkpoint whose trainer_state.json was damaged on disk is named in a clear error (it crashed
// with an internal error on a negative step).
TEST(TrainCli, ResumeFromADamagedTrainerStateIsRefused) {
  io::testing::ScratchDir d;
  ASSERT_EQ(test::run_cli(base_args(d.file("run")) + " --steps 2 --save-every 2").code, 0);
  const std::string state_path = d.file("run/checkpoint-2/trainer_state.json");
  const nlohmann::json good = io::read_json(state_path);
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"step", -5}, {"step", "2"}, {"optimizer_steps", 99}, {"dropout_rng", 5}}) {
    nlohmann::json state = good;
    state[key] = value;
    io::write_json_atomic(state_path, state);
    auto r = test::run_cli(base_args(d.file("run")) + " --steps 4 --resume");
    EXPECT_EQ(r.code, 2) << key << " = " << value.dump() << "\n" << r.err;
    EXPECT_NE(r.err.find("trainer_state.json"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(key), std::string::npos) << r.err;
  }
}

void expect_train_error(const std::string& args, const std::string& fragment) {
  auto r = test::run_cli(args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(TrainCli, BadInput) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  const std::string common = "train --model " + model + " --out " + d.file("o") + " --steps 1 --quiet";
  expect_train_error(common + " --data " + d.write("bad.jsonl", "{\"input_ids\": [1, 2, 3]}\n{oops\n"), "bad.jsonl:2:");
  expect_train_error(common + " --data " + d.write("empty.jsonl", "\n"), "no examples");
  expect_train_error(common + " --data " + d.write("f.jsonl", "{\"ids\": [1]}\n"), "f.jsonl:1:");
  expect_train_error(common + " --data " + model + "/eval.jsonl --targets c_attn", "q_proj");
  expect_train_error(common + " --data " + model + "/eval.jsonl --rank 0", "r must be positive");
  expect_train_error(common + " --data " + model + "/eval.jsonl --alpha -1", "lora_alpha must be positive");
  expect_train_error(common + " --data " + model + "/eval.jsonl --schedule wavy", "wavy");
  expect_train_error(common + " --data " + model + "/eval.jsonl --warmup 2 --warmup-ratio 0.1", "not both");
  expect_train_error(common + " --data " + model + "/eval.jsonl --adam-beta2 1", "--adam-beta2");
  expect_train_error(common + " --data " + model + "/eval.jsonl --adam-epsilon nan", "--adam-epsilon");
  expect_train_error(common + " --data " + model + "/eval.jsonl --warmup-ratio 1", "--warmup-ratio");
  expect_train_error(common + " --data " + model + "/eval.jsonl --schedule cosine_with_min_lr", "--min-lr-rate");
  expect_train_error(common + " --data " + model + "/eval.jsonl --min-lr-rate 0.1", "cosine_with_min_lr");
  expect_train_error(common + " --data " + model + "/eval.jsonl --schedule cosine_with_min_lr --min-lr-rate -1",
                     "--min-lr-rate");
  expect_train_error(common + " --data " + model + "/eval.jsonl --pad-to-multiple-of 0", "--pad-to-multiple-of");
  expect_train_error(common + " --data " + model + "/eval.jsonl --pad-to-multiple-of 9223372036854775807",
                     "--pad-to-multiple-of");
  // Numbers that would train an adapter of infinities or NaNs.
  expect_train_error(common + " --data " + model + "/eval.jsonl --weight-decay inf", "--weight-decay");
  expect_train_error(common + " --data " + model + "/eval.jsonl --lr inf", "--lr");
  expect_train_error(common + " --data " + model + "/eval.jsonl --lr nan", "--lr");
  expect_train_error(common + " --data " + model + "/eval.jsonl --rank-pattern '{\"q_proj\": 0}'", "--rank-pattern");
  expect_train_error(common + " --data " + model + "/eval.jsonl --rank-pattern '{\"q_proj\": 2.5}'", "integer");
  expect_train_error(common + " --data " + model + "/eval.jsonl --alpha-pattern 'q_proj=4'", "--alpha-pattern");
  expect_train_error(common + " --data " + model + "/eval.jsonl --device tpu", "tpu");
  expect_train_error(common + " --data " + model + "/eval.jsonl --targets none", "nothing to train");
  expect_train_error(common + " --data " + model + "/eval.jsonl --targets none --bias all", "no biases");
  expect_train_error(common + " --data " + d.write("t.jsonl", "{\"text\": \"hello\"}\n"), "tokenizer");
  const std::string file = d.write("not_a_folder", "x");
  expect_train_error(train_llama(file) + " --steps 1 --quiet",
                     "cannot create the output folder");
}

}  // namespace

// --warmup-ratio and --schedule cosine_with_min_lr, as transformers' warmup_ratio and
// lr_scheduler_type "cosine_with_min_lr" with lr_scheduler_kwargs {"min_lr_rate": ...}: the lr of
// each step in metrics.jsonl.
TEST(TrainCli, WarmupRatioAndCosineWithMinLr) {
  io::testing::ScratchDir d;
  auto r = test::run_cli(train_llama(d.file("run")) +
                         " --steps 8 --batch-size 2 --seq-len 16 --lr 1e-3 --warmup-ratio 0.2"
                         " --schedule cosine_with_min_lr --min-lr-rate 0.1 --quiet");
  ASSERT_EQ(r.code, 0) << r.err;
  auto metrics = train::read_metrics(d.file("run/metrics.jsonl"));
  ASSERT_EQ(metrics.size(), 8u);
  // ceil(8 * 0.2) = 2 warmup steps; then the cosine from 1e-3 to its floor 1e-4, halfway at step 5.
  const double want[] = {0.0, 5e-4, 1e-3};
  for (int i = 0; i < 3; ++i) EXPECT_DOUBLE_EQ(metrics[i]["lr"].get<double>(), want[i]) << "step " << i + 1;
  EXPECT_DOUBLE_EQ(metrics[5]["lr"].get<double>(), 5.5e-4);
  EXPECT_GT(metrics[7]["lr"].get<double>(), 1e-4);
}

// --adam-epsilon reaches AdamW: Adam's first step is lr * g / (|g| + eps), so B (from zero) moves
// by about lr with the default eps and by far less with a large one.
TEST(TrainCli, AdamFlagsReachTheOptimizer) {
  io::testing::ScratchDir d;
  auto largest_b = [&](const std::string& name, const std::string& flags) {
    auto r = test::run_cli(train_llama(d.file(name)) +
                           " --targets q_proj --dropout 0 --steps 1 --batch-size 2 --seq-len 16 --lr 1e-2"
                           " --schedule constant --max-grad-norm 0 --quiet" + flags);
    EXPECT_EQ(r.code, 0) << r.err;
    return io::testing::largest_abs(d.file(name + "/adapter_model.safetensors"), "lora_B");
  };
  EXPECT_NEAR(largest_b("default", ""), 1e-2, 1e-5);
  EXPECT_LT(largest_b("eps", " --adam-epsilon 10 --adam-beta1 0.5 --adam-beta2 0.9"), 1e-3);
}

// --exclude-modules: PEFT's exclude_modules (names as suffixes or whole paths), saved, and the
// adapter loads back with the same modules.
TEST(TrainCli, ExcludeModules) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");  // two blocks of seven linear layers
  const std::string common = "train --model " + model + " --data " + model + "/eval.jsonl --steps 1 --quiet";
  auto r = test::run_cli(common + " --out " + d.file("run") +
                         " --targets all-linear --exclude-modules down_proj,model.layers.0.self_attn.q_proj");
  ASSERT_EQ(r.code, 0) << r.err;
  auto cfg = io::read_json(d.file("run/adapter_config.json"));
  EXPECT_EQ(cfg["exclude_modules"], nlohmann::json({"down_proj", "model.layers.0.self_attn.q_proj"}));
  size_t pairs = 0;
  const auto file = io::SafetensorsFile::open(d.file("run/adapter_model.safetensors"));
  for (const auto& info : file.tensors()) {
    if (info.name.find("lora_A") == std::string::npos) continue;
    ++pairs;
    EXPECT_EQ(info.name.find("down_proj"), std::string::npos) << info.name;
    EXPECT_EQ(info.name.find("layers.0.self_attn.q_proj"), std::string::npos) << info.name;
  }
  EXPECT_EQ(pairs, 11u);
  auto e = test::run_cli("eval --model " + model + " --data " + model + "/eval.jsonl --adapter " + d.file("run"));
  EXPECT_EQ(e.code, 0) << e.err;
  expect_train_error(common + " --out " + d.file("none") + " --targets q_proj --exclude-modules q_proj",
                     "--exclude-modules");
}

// --rank-pattern / --alpha-pattern: PEFT's per-module ranks and alphas, saved in adapter_config.json.
TEST(TrainCli, RankAndAlphaPatterns) {
  io::testing::ScratchDir d;
  auto r = test::run_cli(train_llama(d.file("o")) +
                         " --steps 1 --quiet --targets q_proj,v_proj --rank 8 --alpha 16"
                         " --rank-pattern '{\"q_proj\": 4}' --alpha-pattern '{\"v_proj\": 32}'");
  ASSERT_EQ(r.code, 0) << r.err;
  auto cfg = io::read_json(d.file("o/adapter_config.json"));
  EXPECT_EQ(cfg["rank_pattern"]["q_proj"], 4);
  EXPECT_EQ(cfg["alpha_pattern"]["v_proj"], 32.0);
  auto st = io::SafetensorsFile::open(d.file("o/adapter_model.safetensors"));
  int64_t q = 0, v = 0;
  for (const auto& t : st.tensors()) {
    if (t.name.find("q_proj.lora_A") != std::string::npos) {
      ++q;
      EXPECT_EQ(t.shape[0], 4) << t.name;
    }
    if (t.name.find("v_proj.lora_A") != std::string::npos) {
      ++v;
      EXPECT_EQ(t.shape[0], 8) << t.name;
    }
  }
  EXPECT_GT(q, 0);
  EXPECT_GT(v, 0);
}


// Bias-only training (BitFit): --targets none --bias all on a base with biases trains, saves an
// adapter of biases only, and eval with it gives the loss training reported.
TEST(TrainCli, BiasOnlyTrainingLowersLossAndEvaluates) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("gpt2");
  auto r = test::run_cli("train --model " + model + " --data " + model + "/eval.jsonl --out " + d.file("bitfit") +
                         " --targets none --bias all --batch-size 2 --lr 2e-2 --warmup 0 --steps 12 --eval-data " +
                         model + "/eval.jsonl --quiet");
  ASSERT_EQ(r.code, 0) << r.err;
  auto cfg = io::read_json(d.file("bitfit/adapter_config.json"));
  EXPECT_TRUE(cfg["target_modules"].is_array() && cfg["target_modules"].empty()) << cfg.dump();
  EXPECT_EQ(cfg["bias"], "all");
  auto metrics = train::read_metrics(d.file("bitfit/metrics.jsonl"));
  EXPECT_LT(metrics.back()["eval_loss"].get<double>(), metrics.front()["eval_loss"].get<double>() - 0.05);
  auto e = test::run_cli("eval --model " + model + " --data " + model + "/eval.jsonl --json --adapter " +
                         d.file("bitfit"));
  ASSERT_EQ(e.code, 0) << e.err;
  EXPECT_NEAR(nlohmann::json::parse(e.out)["loss"].get<double>(), metrics.back()["eval_loss"].get<double>(), 1e-6);
}
