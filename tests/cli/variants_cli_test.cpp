// `lowrank train` with PEFT's LoRA variants end to end: DoRA (--use-dora), embedding and lm_head
// LoRA (--targets embed_tokens,lm_head,...), PiSSA / OLoRA (--init): the written adapter evaluates
// to what training reported, merges to the same loss, generates; and the variant combinations and
// adapters we refuse give `error:` and exit 2.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/train/metrics.h"

using namespace lowrank;

namespace {

const std::string kLlama = test::model_fixture("llama");

std::string train_args(const std::string& out, const std::string& extra) {
  return "train --model " + kLlama + " --data " + kLlama + "/eval.jsonl --eval-data " + kLlama + "/eval.jsonl --out " +
         out + " --rank 4 --dropout 0.1 --batch-size 2 --lr 5e-3 --steps 4 --quiet " + extra;
}

double eval_loss(const std::string& model, const std::string& adapter_flags) {
  auto e = test::run_cli("eval --model " + model + " --data " + kLlama + "/eval.jsonl --json " + adapter_flags);
  EXPECT_EQ(e.code, 0) << e.err;
  return e.code == 0 ? nlohmann::json::parse(e.out)["loss"].get<double>() : -1;
}

// Trains with `extra`, then: eval with the adapter equals train's final eval loss, merge equals
// eval, and generation runs. Returns the adapter folder.
std::string train_eval_merge_generate(const io::testing::ScratchDir& d, const std::string& extra) {
  const std::string out = d.file("run");
  auto r = test::run_cli(train_args(out, extra));
  EXPECT_EQ(r.code, 0) << r.err;
  auto metrics = train::read_metrics(out + "/metrics.jsonl");
  const double trained = metrics.back()["eval_loss"].get<double>();
  EXPECT_LT(trained, metrics.front()["eval_loss"].get<double>()) << extra;
  EXPECT_NEAR(eval_loss(kLlama, "--adapter " + out), trained, 1e-5 * trained) << extra;
  auto m = test::run_cli("merge --model " + kLlama + " --adapter " + out + " --out " + d.file("merged"));
  EXPECT_EQ(m.code, 0) << m.err;
  std::filesystem::copy_file(kLlama + "/eval.jsonl", d.file("merged/eval.jsonl"));
  EXPECT_NEAR(eval_loss(d.file("merged"), ""), trained, 1e-5 * trained) << extra;
  const std::string in = d.write("in.jsonl", "{\"input_ids\": [1, 5, 9, 13]}\n");
  // Greedy generation (KV-cached, the adapter unmerged) continues as the merged model does.
  auto g = test::run_cli("generate --model " + kLlama + " --adapter " + out + " --input " + in + " --output " +
                         d.file("gen.jsonl") + " --greedy --max-new-tokens 8");
  EXPECT_EQ(g.code, 0) << g.err;
  auto gm = test::run_cli("generate --model " + d.file("merged") + " --input " + in + " --output " +
                          d.file("gen_merged.jsonl") + " --greedy --max-new-tokens 8");
  EXPECT_EQ(gm.code, 0) << gm.err;
  const auto ids = [](const std::string& path) { return nlohmann::json::parse(io::read_file(path))["output_ids"]; };
  EXPECT_EQ(ids(d.file("gen.jsonl")), ids(d.file("gen_merged.jsonl"))) << extra;
  EXPECT_FALSE(ids(d.file("gen.jsonl")).empty()) << extra;
  return out;
}

TEST(VariantsCli, DoraTrainsEvaluatesMergesAndGenerates) {
  io::testing::ScratchDir d;
  const std::string out = train_eval_merge_generate(d, "--targets all-linear --use-dora");
  EXPECT_EQ(io::read_json(out + "/adapter_config.json")["use_dora"], true);
  auto st = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
  EXPECT_TRUE(st.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"));
}

TEST(VariantsCli, EmbeddingAndLmHeadLora) {
  io::testing::ScratchDir d;
  const std::string out = train_eval_merge_generate(d, "--targets embed_tokens,lm_head,q_proj");
  auto st = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
  for (const char* key : {"model.embed_tokens.lora_embedding_A", "model.embed_tokens.lora_embedding_B",
                          "model.embed_tokens.base_layer.weight", "lm_head.lora_A.weight", "lm_head.base_layer.weight"})
    EXPECT_TRUE(st.contains(std::string("base_model.model.") + key)) << key;
}

TEST(VariantsCli, PissaAndOloraAdaptersApplyToTheOriginalBase) {
  for (const char* init : {"pissa", "pissa_niter_2", "olora"}) {
    io::testing::ScratchDir d;
    // Trained on the residual, saved converted (rank 2r): train's eval loss on the residual model
    // equals eval of the written adapter on the untouched base.
    const std::string out = train_eval_merge_generate(d, std::string("--targets q_proj,v_proj --init ") + init);
    auto cfg = io::read_json(out + "/adapter_config.json");
    EXPECT_EQ(cfg["r"], 8) << init;
    EXPECT_EQ(cfg["lora_alpha"], 32.0) << init;
  }
}

TEST(VariantsCli, PissaKillAndResumeEqualsUninterruptedRun) {
  // Resuming re-runs the (deterministic) init, so the residual base and the initial pair used for
  // the conversion come back exactly; the trained A and B come from the checkpoint.
  io::testing::ScratchDir d;
  const std::string args = "--save-every 2 --targets q_proj,v_proj --init pissa_niter_2";
  auto straight = test::run_cli(train_args(d.file("straight"), args));
  ASSERT_EQ(straight.code, 0) << straight.err;
  auto killed = test::run_cli(train_args(d.file("resumed"), args), "LOWRANK_TEST_KILL_AFTER_STEP=3");
  EXPECT_EQ(killed.code, 128 + 9) << killed.err;
  auto resumed = test::run_cli(train_args(d.file("resumed"), args + " --resume"));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_EQ(io::read_file(d.file("straight/adapter_model.safetensors")),
            io::read_file(d.file("resumed/adapter_model.safetensors")));
}

void expect_error(const std::string& args, const std::string& fragment) {
  auto r = test::run_cli(args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(VariantsCli, BadInput) {
  io::testing::ScratchDir d;
  expect_error(train_args(d.file("o"), "--targets embed_tokens --use-dora"), "DoRA");
  expect_error(train_args(d.file("o"), "--targets embed_tokens,q_proj --init pissa"), "embed_tokens");
  expect_error(train_args(d.file("o"), "--targets q_proj --init olora --use-dora"), "--use-dora");
  expect_error(train_args(d.file("o"), "--init svd"), "--init");
  expect_error(train_args(d.file("o"), "--init pissa_niter_x"), "pissa_niter_N");
  // A DoRA adapter whose magnitude does not fit the model.
  const std::string src = test::fixture("lora/llama_dora/adapter");
  std::filesystem::create_directories(d.file("bad"));
  std::filesystem::copy_file(src + "/adapter_config.json", d.file("bad/adapter_config.json"));
  auto file = io::SafetensorsFile::open(src + "/adapter_model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  const std::string magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
  for (const auto& info : file.tensors())
    tensors.emplace_back(info.name, info.name == magnitude ? Tensor::zeros({7}) : file.get(info.name).clone());
  io::write_safetensors(d.file("bad/adapter_model.safetensors"), tensors);
  const std::string eval = "eval --model " + kLlama + " --data " + kLlama + "/eval.jsonl --adapter ";
  expect_error(eval + d.file("bad"), "lora_magnitude_vector\" has shape [7], expected [64]");
  // The same tensors without use_dora: the magnitudes belong to no plain LoRA layer.
  auto cfg = io::read_json(src + "/adapter_config.json");
  cfg["use_dora"] = false;
  std::filesystem::create_directories(d.file("nodora"));
  std::filesystem::copy_file(src + "/adapter_model.safetensors", d.file("nodora/adapter_model.safetensors"));
  d.write("nodora/adapter_config.json", cfg.dump());
  expect_error(eval + d.file("nodora"), "use_dora = false");
  // An unreadable adapter file.
  std::filesystem::create_directories(d.file("garbage"));
  std::filesystem::copy_file(src + "/adapter_config.json", d.file("garbage/adapter_config.json"));
  d.write("garbage/adapter_model.safetensors", "not a safetensors file");
  expect_error(eval + d.file("garbage"), "adapter_model.safetensors");
}

}  // namespace
