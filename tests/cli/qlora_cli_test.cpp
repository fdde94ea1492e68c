// `lowrank train/eval/generate --quantize nf4` end to end (QLoRA): the adapter written is a plain
// PEFT adapter (lora_A/lora_B only) that evaluates with --quantize nf4 to what training reported;
// merge of a quantized model and --full with --quantize are refused with `error:` and exit 2.
#include <gtest/gtest.h>

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
         out + " --rank 4 --targets all-linear --batch-size 2 --lr 5e-3 --steps 4 --quiet " + extra;
}

double eval_loss(const std::string& flags) {
  auto e = test::run_cli("eval --model " + kLlama + " --data " + kLlama + "/eval.jsonl --json " + flags);
  EXPECT_EQ(e.code, 0) << e.err;
  return e.code == 0 ? nlohmann::json::parse(e.out)["loss"].get<double>() : -1;
}

}  // namespace

TEST(QloraCli, TrainsEvaluatesAndGeneratesWithAnNf4Base) {
  io::testing::ScratchDir d;
  const std::string out = d.file("run");
  auto r = test::run_cli(train_args(out, "--quantize nf4 --checkpointing"));
  ASSERT_EQ(r.code, 0) << r.err;
  auto metrics = train::read_metrics(out + "/metrics.jsonl");
  const double before = metrics.front()["eval_loss"].get<double>(), trained = metrics.back()["eval_loss"].get<double>();
  EXPECT_LT(trained, before);
  // The base eval loss of the 4-bit model is near, not equal to, the full-precision one.
  const double base16 = eval_loss(""), base4 = eval_loss("--quantize nf4");
  EXPECT_NE(base4, base16);
  EXPECT_NEAR(base4, base16, 0.05 * base16);
  EXPECT_NEAR(before, base4, 1e-5 * base4);
  EXPECT_NEAR(eval_loss("--quantize nf4 --adapter " + out), trained, 1e-5 * trained);
  // A normal PEFT adapter: only lora_A / lora_B tensors, nothing about quantization.
  auto f = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
  for (const auto& info : f.tensors())
    for (const std::string& name : {info.name})
      EXPECT_TRUE(name.find("lora_A.weight") != std::string::npos || name.find("lora_B.weight") != std::string::npos)
          << name;
  const std::string in = d.write("in.jsonl", "{\"input_ids\": [1, 5, 9, 13]}\n");
  auto g = test::run_cli("generate --model " + kLlama + " --quantize nf4 --adapter " + out + " --input " + in +
                         " --output " + d.file("gen.jsonl") + " --greedy --max-new-tokens 4");
  EXPECT_EQ(g.code, 0) << g.err;
}

TEST(QloraCli, RefusedCombinationsExitTwo) {
  io::testing::ScratchDir d;
  auto full = test::run_cli(train_args(d.file("full"), "--quantize nf4 --full"));
  EXPECT_EQ(full.code, 2);
  EXPECT_NE(full.err.find("error: --full with --quantize nf4"), std::string::npos) << full.err;
  auto bad = test::run_cli("eval --model " + kLlama + " --data " + kLlama + "/eval.jsonl --quantize int3");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("error: --quantize must be none or nf4"), std::string::npos) << bad.err;
  auto pissa = test::run_cli(train_args(d.file("pissa"), "--quantize nf4 --init pissa"));
  EXPECT_EQ(pissa.code, 2);
  EXPECT_NE(pissa.err.find("error: --init pissa with --quantize nf4"), std::string::npos) << pissa.err;
}
