// `lowrank eval` and `lowrank inspect` end to end, and their bad-input behaviour.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"

using namespace lowrank;

namespace {

class EvalCli : public ::testing::TestWithParam<std::string> {};

TEST_P(EvalCli, JsonLossEqualsTransformers) {
  const std::string dir = test::model_fixture(GetParam());
  auto r = test::run_cli("eval --model " + dir + " --data " + dir + "/eval.jsonl --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto got = nlohmann::json::parse(r.out);
  auto want = io::read_json(dir + "/expected.json");
  EXPECT_NEAR(got["loss"].get<double>(), want["loss"].get<double>(), 1e-5 * want["loss"].get<double>());
  EXPECT_EQ(got["tokens"].get<int64_t>(), want["tokens"].get<int64_t>());
  EXPECT_NEAR(got["perplexity"].get<double>(), want["perplexity"].get<double>(), 1e-4 * want["perplexity"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EvalCli,
                         ::testing::Values("llama", "llama_tied_bias", "llama3_rope", "llama_bf16", "mistral",
                                           "qwen2", "qwen3", "gpt2"));

void expect_bad_input(const std::string& args, const std::string& fragment) {
  auto r = test::run_cli(args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(EvalCliErrors, BadDataLines) {
  io::testing::ScratchDir d;
  const std::string model = test::model_fixture("llama");
  expect_bad_input("eval --model " + model + " --data " + d.write("a.jsonl", "{\"input_ids\": [1, 2]}\nnot json\n"),
                   "a.jsonl:2: invalid JSON");
  expect_bad_input("eval --model " + model + " --data " + d.write("b.jsonl", "{\"ids\": [1, 2]}\n"),
                   "b.jsonl:1: expected one of \"input_ids\", \"text\"");
  expect_bad_input("eval --model " + model + " --data " + d.write("c.jsonl", "{\"input_ids\": [1, 9999]}\n"),
                   "c.jsonl:1: token id 9999");
  expect_bad_input("eval --model " + model + " --data " + d.write("e.jsonl", ""), "no examples");
  expect_bad_input("eval --model " + model + " --data " + d.file("missing.jsonl"), "missing.jsonl");
  expect_bad_input("eval --model " + model + " --data " + d.write("f.jsonl", "[1, 2]\n"), "f.jsonl:1: expected a JSON object");
}

TEST(EvalCliErrors, BadFlags) {
  expect_bad_input("eval --model " + test::model_fixture("llama"), "--data");
  expect_bad_input("eval --model " + test::model_fixture("llama") + " --data x --seq-len -3", "--seq-len");
  expect_bad_input("eval --model " + test::model_fixture("llama") + " --data x --bogus", "--bogus");
  expect_bad_input("frobnicate", "frobnicate");
}

TEST(InspectCli, ModelAdapterAndFile) {
  auto r = test::run_cli("inspect " + test::model_fixture("qwen2"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("Qwen2ForCausalLM"), std::string::npos);
  EXPECT_NE(r.out.find("parameters: 135968"), std::string::npos) << r.out;
  r = test::run_cli("inspect " + test::fixture("lora/llama_rslora_paths/adapter"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("parameters: 3392"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("use_rslora"), std::string::npos);
  r = test::run_cli("inspect " + test::model_fixture("gpt2") + "/model.safetensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("transformer.h.0.attn.c_attn.weight"), std::string::npos);
  expect_bad_input("inspect /nonexistent/x.safetensors", "/nonexistent/x.safetensors");
  io::testing::ScratchDir d;
  expect_bad_input("inspect " + d.write("t.safetensors", std::string("\x10\0\0\0\0\0\0\0{}", 10)), "t.safetensors");
}

}  // namespace
