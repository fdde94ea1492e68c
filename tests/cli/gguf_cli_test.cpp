// `lowrank gguf` without llama.cpp: the file's keys, names and values as llama.cpp's converter
// writes them (read back with our GGUF reader), and every bad input an error with exit code 2.
// tests/llamacpp/ runs the same files with llama.cpp itself.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/gguf.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/model/gguf_export.h"
#include "lowrank/model/model.h"
#include "same_values.h"
#include "test_paths.h"

using namespace lowrank;
using io::testing::ScratchDir;

TEST(GgufCli, ModelFileHoldsEveryWeightUnderLlamaCppsNamesAndLayout) {
  const std::string dir = test::model_fixture("llama");
  ScratchDir tmp;
  const auto r = test::run_cli("gguf --model " + dir + " --out " + tmp.file("m.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  const io::GgufFile f = io::GgufFile::open(tmp.file("m.gguf"));
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_string("general.type"), "model");
  EXPECT_EQ(f.get_integer("llama.block_count"), 2);
  EXPECT_EQ(f.get_integer("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_integer("llama.rope.dimension_count"), 16);
  EXPECT_EQ(f.get_real("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f.get_integer("general.file_type"), 0);  // the checkpoint's f32
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "none");
  EXPECT_EQ(f.get_integer("llama.vocab_size"), 320);

  const model::Model m = model::Model::load(dir);
  size_t checked = 0;
  for (const auto& [name, t] : model::named_tensors(m.weights())) {
    const auto plan = model::gguf_tensor_plan(m.config(), name);
    ASSERT_TRUE(plan) << name;
    ASSERT_NE(f.find_tensor(plan->name), nullptr) << plan->name;
    EXPECT_EQ(f.find_tensor(plan->name)->type, 0u) << plan->name;
    EXPECT_TRUE(test::same_values(f.get_f32(plan->name), model::apply_gguf_plan(*plan, t, true))) << plan->name;
    ++checked;
  }
  EXPECT_EQ(checked, f.tensors().size());
  // q's rows regrouped per head for ggml's RoPE: row 1 of head 0 is row d/2 = 8 of the checkpoint.
  const Tensor q = f.get_f32("blk.0.attn_q.weight");
  const Tensor w = m.weights().layers[0].q.weight;
  for (int64_t c = 0; c < w.dim(1); ++c) EXPECT_EQ(q.f32()[1 * w.dim(1) + c], w.f32()[8 * w.dim(1) + c]);
}

TEST(GgufCli, Q8_0QuantizesTheMatricesAndKeepsNormsF32) {
  ScratchDir tmp;
  const auto r = test::run_cli("gguf --model " + test::model_fixture("llama") + " --outtype q8_0 --out " + tmp.file("m.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  const io::GgufFile f = io::GgufFile::open(tmp.file("m.gguf"));
  EXPECT_EQ(f.get_integer("general.file_type"), 7);
  EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, static_cast<uint32_t>(io::GgmlType::Q8_0));
  EXPECT_EQ(f.find_tensor("token_embd.weight")->type, static_cast<uint32_t>(io::GgmlType::Q8_0));
  EXPECT_EQ(f.find_tensor("blk.0.attn_norm.weight")->type, 0u);
  EXPECT_EQ(f.find_tensor("output_norm.weight")->type, 0u);
}

TEST(GgufCli, BundledTokenizerAsTheConverterWritesIt) {
  ScratchDir tmp;
  const std::string base = test::source_dir() + "/models/base";
  const auto r = test::run_cli("gguf --model " + base + " --vocab-only --out " + tmp.file("v.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  const io::GgufFile f = io::GgufFile::open(tmp.file("v.gguf"));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "gpt-2");
  const auto& tokens = f.find("tokenizer.ggml.tokens")->texts;
  const auto& types = f.find("tokenizer.ggml.token_type")->integers;
  ASSERT_EQ(tokens.size(), 8192u);
  ASSERT_EQ(types.size(), 8192u);
  EXPECT_EQ(tokens[0], "<|begin_of_text|>");
  EXPECT_EQ(types[0], 3);  // control
  EXPECT_EQ(types[100], 1);  // normal
  const auto tj = io::read_json(base + "/tokenizer.json");
  EXPECT_EQ(f.find("tokenizer.ggml.merges")->texts.size(), tj["model"]["merges"].size());
  EXPECT_EQ(f.get_integer("tokenizer.ggml.bos_token_id"), 0);
  EXPECT_EQ(f.get_integer("tokenizer.ggml.eos_token_id"), 1);
  EXPECT_EQ(f.get_integer("tokenizer.ggml.padding_token_id"), 2);
  EXPECT_EQ(f.find("tokenizer.ggml.add_bos_token")->integer, 1);  // the post-processor puts BOS first
}

TEST(GgufCli, LoraFileNamesAndPermutesAsTheConverter) {
  const std::string dir = test::fixture("lora/llama_all_linear");
  const std::string base = test::model_fixture("llama");
  ScratchDir tmp;
  const auto r = test::run_cli("gguf --model " + base + " --adapter " + dir + "/adapter --out " + tmp.file("a.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  const io::GgufFile f = io::GgufFile::open(tmp.file("a.gguf"));
  EXPECT_EQ(f.get_string("general.type"), "adapter");
  EXPECT_EQ(f.get_string("adapter.type"), "lora");
  EXPECT_EQ(f.get_real("adapter.lora.alpha"), 8.0);
  EXPECT_EQ(f.tensors().size(), 28u);  // 14 projections × (A, B)
  const model::Model m = model::Model::load(base);
  const lora::Adapter a = lora::Adapter::load(dir + "/adapter", m);
  const lora::LoraPair* q = a.find(0, Target::Q);
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(test::same_values(f.get_f32("blk.0.attn_q.weight.lora_a"), q->A));
  auto plan = *model::gguf_tensor_plan(m.config(), q->module + ".weight");
  EXPECT_TRUE(test::same_values(f.get_f32("blk.0.attn_q.weight.lora_b"), model::apply_gguf_plan(plan, q->B, false)));
  EXPECT_FALSE(test::same_values(f.get_f32("blk.0.attn_q.weight.lora_b"), q->B));  // rows regrouped
  const lora::LoraPair* v = a.find(0, Target::V);
  EXPECT_TRUE(test::same_values(f.get_f32("blk.0.attn_v.weight.lora_b"), v->B));
}

TEST(GgufCli, BadInputIsAnErrorAndWritesNothing) {
  ScratchDir tmp;
  const std::string llama = test::model_fixture("llama");
  const std::string out = tmp.file("x.gguf");
  struct Case {
    std::string args, message;
  };
  const std::string adapter = test::fixture("lora/llama_all_linear/adapter");
  const std::vector<Case> cases = {
      {"--model " + llama + " --outtype q4_k", "--outtype must be f32, f16, bf16 or q8_0"},
      {"--model " + llama + " --vocab-only --adapter " + adapter, "--vocab-only writes no weights"},
      {"--model " + llama + " --merge", "--merge needs at least one --adapter"},
      {"--model " + llama + " --adapter " + adapter + " --adapter " + adapter, "one adapter per GGUF LoRA file"},
      {"--model " + llama + " --adapter " + test::fixture("lora/qwen3_all_linear/adapter"), "error: "},
      {"--model " + llama + " --adapter " + adapter + ":0.5", "a LoRA file takes no scale"},
      {"--model " + tmp.path() + "/missing", "error: "},
  };
  for (const auto& c : cases) {
    const auto r = test::run_cli("gguf " + c.args + " --out " + out);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.args;
  }
  // A tokenizer llama.cpp would split otherwise (a byte-level one with a pre-tokenizer regex
  // llama.cpp has no name for): refused.
  const std::string llama3 = test::source_dir() + "/tests/data/tokenizers/llama3";
  if (std::filesystem::exists(llama3)) {
    const std::string dir = tmp.file("odd");
    std::filesystem::create_directories(dir);
    auto tj = io::read_json(llama3 + "/tokenizer.json");
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\s+";
    io::write_json_atomic(dir + "/tokenizer.json", tj);
    auto config = io::read_json(llama + "/config.json");
    config["vocab_size"] = 128256;
    io::write_json_atomic(dir + "/config.json", config);
    const auto r = test::run_cli("gguf --model " + dir + " --vocab-only --out " + out);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("none that llama.cpp knows by name"), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(out));
  }
}
