// Generation: greedy continuations equal to transformers + PEFT (no adapter, one, two with
// scales), KV-cache decoding equal to full recomputation, merge/unmerge, and the CLI.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/infer/generator.h"
#include "lowrank/io/files.h"
#include "lowrank/io/jsonl.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/merge.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

TEST(Generate, GreedyContinuationsEqualTransformersAndPeft) {
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    model::Model m = model::Model::load(test::model_fixture(c["model"].get<std::string>()));
    std::vector<std::string> specs;
    for (const auto& a : c["adapters"])
      specs.push_back(test::fixture("lora/generate/" + a[0].get<std::string>()) + ":" +
                      std::to_string(a[1].get<double>()));
    lora::AdapterSet set(specs, m);
    infer::GenerateOptions o;
    o.max_new_tokens = 12;
    o.sampling.greedy = true;
    o.eos_ids = c["eos"].get<std::vector<int32_t>>();
    EXPECT_EQ(o.eos_ids, infer::model_eos_ids(m.config())) << c["model"];
    infer::Generator g(m, set.hook());
    auto out = g.generate(c["prompt"].get<std::vector<int32_t>>(), o);
    EXPECT_EQ(out, c["output_ids"].get<std::vector<int32_t>>()) << c["model"] << " adapters " << c["adapters"];
    if (c.contains("eval_loss")) {
      auto seqs = train::read_token_sequences(test::model_fixture("llama") + "/eval.jsonl", m.config().vocab_size);
      EXPECT_NEAR(train::evaluate(m, seqs, set.hook()).loss, c["eval_loss"].get<double>(), 1e-5);
    }
  }
}

class KVCacheParity : public ::testing::TestWithParam<std::string> {};

TEST_P(KVCacheParity, DecodeLogitsEqualFullRecompute) {
  model::Model m = model::Model::load(test::model_fixture(GetParam()));
  auto seq = train::read_token_sequences(test::model_fixture(GetParam()) + "/eval.jsonl", m.config().vocab_size)[0];
  ASSERT_GE(seq.size(), 20u);
  model::KVCache kv = model::KVCache::create(m.config(), static_cast<int64_t>(seq.size()));
  const int64_t prefill = 7;
  model::TokenBatch first{{seq.begin(), seq.begin() + prefill}, 1, prefill};
  Tensor hp = m.hidden_states(first, nullptr, nullptr, &kv);
  Tensor full = m.logits({seq, 1, static_cast<int64_t>(seq.size())});
  const int64_t V = m.config().vocab_size;
  auto compare_row = [&](const Tensor& logits_row, int64_t pos) {
    float max_ref = 0, max_err = 0;
    for (int64_t i = 0; i < V; ++i) {
      const float want = full.f32()[pos * V + i];
      max_ref = std::max(max_ref, std::fabs(want));
      max_err = std::max(max_err, std::fabs(want - logits_row.f32()[i]));
    }
    EXPECT_LE(max_err, 1e-5f * max_ref) << GetParam() << " position " << pos;
  };
  Tensor lp = m.project_vocab(hp);
  for (int64_t p = 0; p < prefill; ++p) compare_row(lp.slice_rows(p, p + 1), p);
  for (size_t p = prefill; p < seq.size(); ++p) {
    Tensor h = m.hidden_states({{seq[p]}, 1, 1}, nullptr, nullptr, &kv);
    compare_row(m.project_vocab(h), static_cast<int64_t>(p));
  }
  EXPECT_EQ(kv.length, static_cast<int64_t>(seq.size()));
}

// mistral: sliding window; qwen3: q/k norm + yarn; gpt2: learned positions; gemma2: soft-capping and
// sliding layers; gemma3: per-layer RoPE; phi3: fused projections and partial rotary. (Not
// phi3_longrope: its 40-token sequence switches to the long factors, which a cache filled with
// short-factor keys does not follow, in transformers either.)
INSTANTIATE_TEST_SUITE_P(Fixtures, KVCacheParity,
                         ::testing::Values("llama", "mistral", "qwen3", "gpt2", "qwen2", "gemma2", "gemma3", "phi3"));

// expected.json's "greedy": 12 argmax tokens after a prompt, computed by transformers with full
// recomputation and no end-of-sequence stop; lowrank's KV-cached generator must give the same.
class GreedyParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GreedyParity, KVCachedGreedyEqualsTransformers) {
  const std::string dir = test::model_fixture(GetParam());
  model::Model m = model::Model::load(dir);
  const auto greedy = io::read_json(dir + "/expected.json")["greedy"];
  const auto want = greedy["output_ids"].get<std::vector<int32_t>>();
  infer::GenerateOptions o;
  o.max_new_tokens = static_cast<int64_t>(want.size());
  o.sampling.greedy = true;  // no eos_ids: the reference does not stop either
  infer::Generator g(m, nullptr);
  EXPECT_EQ(g.generate(greedy["prompt"].get<std::vector<int32_t>>(), o), want) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GreedyParity, ::testing::Values("gemma2", "gemma3", "phi3", "phi3_longrope"));

// LongRoPE switches every position to its long factors once the sequence passes
// original_max_position_embeddings (32 here): greedy decoding across the switch must equal argmax
// over full recomputation (transformers drops its KV cache at that point).
TEST(Generate, LongRopeCrossingEqualsFullRecomputation) {
  const std::string dir = test::model_fixture("phi3_longrope");
  model::Model m = model::Model::load(dir);
  auto seq = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size)[0];
  const std::vector<int32_t> prompt(seq.begin(), seq.begin() + 28);
  std::vector<int32_t> want, context = prompt;
  for (int i = 0; i < 10; ++i) {
    const int64_t T = static_cast<int64_t>(context.size()), V = m.config().vocab_size;
    Tensor logits = m.logits({context, 1, T});
    const float* last = logits.f32() + (T - 1) * V;
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + V) - last);
    want.push_back(next);
    context.push_back(next);
  }
  infer::GenerateOptions o;
  o.max_new_tokens = 10;
  o.sampling.greedy = true;
  infer::Generator g(m, nullptr);
  EXPECT_EQ(g.generate(prompt, o), want);
  EXPECT_TRUE(m.rope_changes(32, 33));
  EXPECT_FALSE(m.rope_changes(33, 34));
}

TEST(Merge, MergedLossEqualsUnmergedAndUnmergeRestores) {
  const std::string dir = test::model_fixture("llama");
  model::Model m = model::Model::load(dir);
  Tensor w0 = m.weights().layers[1].down.weight.clone();
  lora::AdapterSet set({test::fixture("lora/generate/adapter_a") + ":0.7"}, m);
  auto seqs = train::read_token_sequences(dir + "/eval.jsonl", m.config().vocab_size);
  const double unmerged = train::evaluate(m, seqs, set.hook()).loss;
  lora::merge_adapter(m, *set.adapters()[0], 0.7);
  const double merged = train::evaluate(m, seqs, nullptr).loss;
  EXPECT_NEAR(merged, unmerged, 1e-6 * unmerged);
  EXPECT_GT(std::fabs(merged - train::evaluate(model::Model::load(dir), seqs, nullptr).loss), 1e-3)
      << "the adapter must change the loss, or this test proves nothing";
  lora::merge_adapter(m, *set.adapters()[0], 0.7, -1);
  const Tensor& w = m.weights().layers[1].down.weight;
  for (int64_t i = 0; i < w.numel(); ++i) ASSERT_NEAR(w.f32()[i], w0.f32()[i], 1e-6f);
}

void expect_error(const std::string& args, const std::string& fragment) {
  auto r = test::run_cli(args);
  EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

// --input of 16 lines or more shows a progress bar of lines on stderr (stdout stays empty); --quiet none.
TEST(GenerateCli, ManyLinesShowProgress) {
  io::testing::ScratchDir d;
  const std::string llama = test::model_fixture("llama");
  std::string lines;
  for (int i = 0; i < 16; ++i) lines += nlohmann::json{{"input_ids", {1, 5 + i, 9}}}.dump() + "\n";
  const std::string in = d.write("in.jsonl", lines);
  const std::string run = "generate --model " + llama + " --input " + in + " --output " + d.file("o.jsonl") + " --greedy --max-new-tokens 3";
  auto shown = test::run_cli(run);
  ASSERT_EQ(shown.code, 0) << shown.err;
  EXPECT_NE(shown.err.find("line 16/16"), std::string::npos) << shown.err;
  EXPECT_EQ(shown.out, "");
  auto quiet = test::run_cli(run + " --quiet");
  ASSERT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.err.find("line "), std::string::npos) << quiet.err;
}

TEST(GenerateCli, BatchModeAndBadInput) {
  io::testing::ScratchDir d;
  const std::string llama = test::model_fixture("llama");
  auto cases = io::read_json(test::fixture("lora/generate/expected.json"));
  const auto& c = cases[0];
  nlohmann::json line{{"input_ids", c["prompt"]}, {"id", 7}};
  const std::string in = d.write("in.jsonl", line.dump() + "\n" + line.dump() + "\n");
  auto r = test::run_cli("generate --model " + llama + " --input " + in + " --output " + d.file("out.jsonl") +
                         " --greedy --max-new-tokens 12");
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<nlohmann::json> outs;
  io::for_each_jsonl(d.file("out.jsonl"), [&](int64_t, const nlohmann::json& j) { outs.push_back(j); });
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_EQ(outs[0]["output_ids"], c["output_ids"]);
  EXPECT_EQ(outs[0]["id"], 7);
  // Same seed, same sample; the sampler must actually sample (two seeds differ somewhere).
  auto s1 = test::run_cli("generate --model " + llama + " --input " + in + " --output " + d.file("s1.jsonl") +
                          " --seed 3 --temperature 1.5 --top-k 50 --top-p 0.95");
  auto s2 = test::run_cli("generate --model " + llama + " --input " + in + " --output " + d.file("s2.jsonl") +
                          " --seed 3 --temperature 1.5 --top-k 50 --top-p 0.95");
  auto s3 = test::run_cli("generate --model " + llama + " --input " + in + " --output " + d.file("s3.jsonl") +
                          " --seed 4 --temperature 1.5 --top-k 50 --top-p 0.95");
  ASSERT_EQ(s1.code, 0) << s1.err;
  EXPECT_EQ(io::read_file(d.file("s1.jsonl")), io::read_file(d.file("s2.jsonl")));
  EXPECT_NE(io::read_file(d.file("s1.jsonl")), io::read_file(d.file("s3.jsonl")));

  std::vector<int> longp(200, 5);
  const std::string too_long = d.write("long.jsonl", nlohmann::json{{"input_ids", longp}}.dump() + "\n");
  expect_error("generate --model " + llama + " --input " + too_long + " --output " + d.file("x.jsonl"),
               "context window is 128");
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") + " --adapter " +
                   test::fixture("lora/generate/adapter_a") + ":half",
               "scale 'half' is not a number");
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") + " --adapter " +
                   test::fixture("lora/generate/adapter_a") + ":1e300",
               "beyond the f32 range");
  expect_error("generate --model " + test::model_fixture("qwen2") + " --input " + in + " --output " +
                   d.file("x.jsonl") + " --adapter " + test::fixture("lora/generate/adapter_a"),
               "expected [96, 4]");
  expect_error("generate --model " + test::model_fixture("qwen3") + " --input " + in + " --output " + d.file("x.jsonl"),
               "no eos_token_id");
  EXPECT_EQ(test::run_cli("generate --model " + test::model_fixture("qwen3") + " --input " + in + " --output " +
                          d.file("x.jsonl") + " --max-new-tokens 4").code, 0);
  expect_error("generate --model " + llama + " --prompt hi", "no tokenizer.json");
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") + " --top-p 0",
               "--top-p");
  // Values whose f32 arithmetic overflows (1 / 1e-40; logits · 1e-300) are refused, not sampled from.
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") + " --temperature 1e-40",
               "--temperature must be at least");
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") +
                   " --repetition-penalty 1e-300",
               "--repetition-penalty must be in");
  expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") +
                   " --repetition-penalty 1e300",
               "--repetition-penalty must be in");
  for (const auto& [flag, says] : std::vector<std::pair<std::string, std::string>>{
           {" --min-p 1.5", "--min-p must be in"},
           {" --presence-penalty 2.5", "--presence-penalty must be in"},
           {" --frequency-penalty -3", "--frequency-penalty must be in"}})
    expect_error("generate --model " + llama + " --input " + in + " --output " + d.file("x.jsonl") + flag, says);
}

}  // namespace

#include "train/byte_model.h"

namespace {

TEST(GenerateCli, TextPromptStreamsAndChatTemplateApplies) {
  io::testing::ScratchDir d;
  const std::string model = test::write_byte_model(d.file("m"));
  auto plain = test::run_cli("generate --model " + model + " --prompt Hello --greedy --max-new-tokens 6");
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_FALSE(plain.out.empty());
  // --chat must change the prompt the model sees, hence (greedy) the continuation.
  auto chat = test::run_cli("generate --model " + model + " --prompt Hello --greedy --max-new-tokens 6 --chat");
  ASSERT_EQ(chat.code, 0) << chat.err;
  auto builtin = test::run_cli("generate --model " + model +
                               " --prompt Hello --greedy --max-new-tokens 6 --chat --chat-template chatml");
  ASSERT_EQ(builtin.code, 0) << builtin.err;
  // The built-in chatml template: the same continuation as the chatml prompt rendered by hand and
  // tokenized without special tokens (the template holds them), given as input_ids.
  const std::string rendered =
      d.write("chatml.jsonl", R"({"text": "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"})" "\n");
  auto ids = test::run_cli("tokenize --tokenizer " + model + " --input " + rendered);
  ASSERT_EQ(ids.code, 0) << ids.err;
  const auto ids_json = nlohmann::json::parse(ids.out.substr(0, ids.out.find('\n')));
  const std::string by_hand_in = d.write("ids.jsonl", "{\"input_ids\": " + ids_json["ids"].dump() + "}\n");
  ASSERT_EQ(test::run_cli("generate --model " + model + " --input " + by_hand_in + " --output " + d.file("h.jsonl") +
                          " --greedy --max-new-tokens 6").code, 0);
  std::vector<nlohmann::json> by_hand;
  io::for_each_jsonl(d.file("h.jsonl"), [&](int64_t, const nlohmann::json& j) { by_hand.push_back(j); });
  ASSERT_EQ(by_hand.size(), 1u);
  EXPECT_EQ(by_hand[0]["text"].get<std::string>() + "\n", builtin.out);
  EXPECT_NE(builtin.out, plain.out);
  const std::string in = d.write("p.jsonl", "{\"prompt\": \"Hello\"}\n");
  ASSERT_EQ(test::run_cli("generate --model " + model + " --input " + in + " --output " + d.file("o.jsonl") +
                          " --greedy --max-new-tokens 6 --chat").code, 0);
  std::vector<nlohmann::json> rows;
  io::for_each_jsonl(d.file("o.jsonl"), [&](int64_t, const nlohmann::json& j) { rows.push_back(j); });
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["text"].get<std::string>() + "\n", chat.out);
  EXPECT_NE(plain.out, chat.out);
  auto bad = test::run_cli("generate --model " + model + " --prompt Hello --chat --chat-template nope");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("nope"), std::string::npos) << bad.err;
}

}  // namespace
