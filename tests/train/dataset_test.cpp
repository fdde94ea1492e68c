// Training data formats: input_ids(+labels), text, prompt/completion (loss on the completion),
// chat messages (loss on assistant turns), .txt packing; shuffling and batching.
#include <gtest/gtest.h>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/tokenizer/tokenizer.h"
#include "lowrank/train/dataset.h"
#include "lowrank/train/metrics.h"
#include "lowrank/train/text_encoder.h"
#include "train/byte_model.h"

using namespace lowrank;

namespace {

struct Fixture {
  io::testing::ScratchDir d;
  std::string model = test::write_byte_model(d.file("model"));
  std::optional<train::TextEncoder> enc = train::make_text_encoder(model);
  train::DatasetOptions opts(int64_t seq_len = 64) { return {seq_len, 320, &*enc}; }
};

std::string labelled_text(const tok::Tokenizer& tk, const train::Example& e) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < e.ids.size(); ++i)
    if (e.labels[i] != -100) ids.push_back(e.ids[i]);
  return tk.decode(ids);
}

TEST(Dataset, PromptCompletionMasksThePrompt) {
  Fixture f;
  ASSERT_TRUE(f.enc.has_value());
  auto data = train::Dataset::load(f.d.write("pc.jsonl", R"({"prompt": "Q: 2+2?\nA:", "completion": " 4"})" "\n"), f.opts());
  ASSERT_EQ(data.size(), 1);
  auto tk = tok::Tokenizer::load(f.model);
  EXPECT_EQ(tk.decode(data[0].ids), "Q: 2+2?\nA: 4<|im_end|>");
  EXPECT_EQ(labelled_text(tk, data[0]), " 4<|im_end|>");  // eos appended and learned
}

TEST(Dataset, ChatLossOnAssistantTurnsOnly) {
  Fixture f;
  const char* line =
      R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},)"
      R"( {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},)"
      R"( {"role": "assistant", "content": "Later."}]})";
  auto data = train::Dataset::load(f.d.write("chat.jsonl", std::string(line) + "\n"), f.opts(128));
  auto tk = tok::Tokenizer::load(f.model);
  EXPECT_EQ(tk.decode(data[0].ids),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nLater.<|im_end|>\n");
  EXPECT_EQ(labelled_text(tk, data[0]), "Hello!<|im_end|>\nLater.<|im_end|>\n");
}

// --packing (TRL's wrapped packing): the examples joined in file order and cut into seq_len
// blocks; the prompt's masks survive; the last block may be short.
TEST(Dataset, PackingJoinsExamplesIntoBlocks) {
  Fixture f;
  const std::string path = f.d.write("p.jsonl", std::string(R"({"text": "abc"})") + "\n" +
                                                    R"({"prompt": "Q", "completion": "xy"})" + "\n" + R"({"text": "defgh"})" + "\n");
  auto plain = train::Dataset::load(path, f.opts(4));
  train::DatasetOptions o = f.opts(4);
  o.pack = true;
  auto packed = train::Dataset::load(path, o);
  std::vector<int32_t> ids, labels, joined_ids, joined_labels;
  for (int64_t i = 0; i < plain.size(); ++i) {
    ids.insert(ids.end(), plain[i].ids.begin(), plain[i].ids.end());
    labels.insert(labels.end(), plain[i].labels.begin(), plain[i].labels.end());
  }
  EXPECT_EQ(plain.truncated(), 1) << "unpacked, the 6-token text is cut at 4";
  ids.clear();
  labels.clear();
  for (const char* line : {R"({"text": "abc"})", R"({"prompt": "Q", "completion": "xy"})", R"({"text": "defgh"})"}) {
    auto one = train::Dataset::load(f.d.write("one.jsonl", std::string(line) + "\n"), f.opts(64));
    ids.insert(ids.end(), one[0].ids.begin(), one[0].ids.end());
    labels.insert(labels.end(), one[0].labels.begin(), one[0].labels.end());
  }
  ASSERT_EQ(ids.size(), 4u + 4u + 6u);  // abc+eos, Q xy+eos, defgh+eos
  ASSERT_EQ(packed.size(), 4);           // 14 tokens in blocks of 4: 4, 4, 4, 2
  for (int64_t i = 0; i < packed.size(); ++i) {
    EXPECT_LE(packed[i].ids.size(), 4u);
    joined_ids.insert(joined_ids.end(), packed[i].ids.begin(), packed[i].ids.end());
    joined_labels.insert(joined_labels.end(), packed[i].labels.begin(), packed[i].labels.end());
  }
  EXPECT_EQ(joined_ids, ids);
  EXPECT_EQ(joined_labels, labels);
  EXPECT_EQ(packed[1].labels[0], -100) << "the prompt's token keeps no loss";
  EXPECT_EQ(packed.truncated(), 0);
}

TEST(Dataset, TextTxtAndInputIds) {
  Fixture f;
  auto text = train::Dataset::load(f.d.write("t.jsonl", R"({"text": "abc"})" "\n"), f.opts());
  EXPECT_EQ(text[0].ids, (std::vector<int32_t>{'a', 'b', 'c', 257}));
  std::string big(150, 'x');
  auto txt = train::Dataset::load(f.d.write("p.txt", big), f.opts());  // packed into 64-token blocks
  EXPECT_EQ(txt.size(), 3);
  EXPECT_EQ(txt[2].ids.size(), 22u);
  auto ids = train::Dataset::load(f.d.write("i.jsonl", R"({"input_ids": [5, 6, 7], "labels": [-100, 6, 7]})" "\n"), f.opts());
  EXPECT_EQ(ids[0].labels, (std::vector<int32_t>{-100, 6, 7}));
  auto truncated = train::Dataset::load(f.d.write("long.jsonl", "{\"text\": \"" + big + "\"}\n"), f.opts());
  EXPECT_EQ(truncated.truncated(), 1);
  EXPECT_EQ(truncated[0].ids.size(), 64u);
  EXPECT_THROW(train::Dataset::load(f.d.write("bad.jsonl", R"({"input_ids": [1, 2], "labels": [1]})" "\n"), f.opts()),
               Error);
  EXPECT_THROW(train::Dataset::load(f.d.write("m.jsonl", R"({"messages": "hi"})" "\n"), f.opts()), Error);
  // An all-ones attention_mask (as HF exports carry) is fine; padding (a zero) or a wrong length is refused.
  const std::string ones = R"({"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]})" "\n";
  const std::string padded = R"({"input_ids": [5, 6, 0], "attention_mask": [1, 1, 0]})" "\n";
  const std::string short_mask = R"({"input_ids": [5, 6, 7], "attention_mask": [1, 1]})" "\n";
  EXPECT_EQ(train::Dataset::load(f.d.write("a.jsonl", ones), f.opts())[0].ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_THROW(train::Dataset::load(f.d.write("p0.jsonl", padded), f.opts()), Error);
  EXPECT_THROW(train::Dataset::load(f.d.write("p1.jsonl", short_mask), f.opts()), Error);
}

TEST(Dataset, ExampleOrderIsAPermutationPerEpochAndReproducible) {
  train::ExampleOrder a(10, 5), b(10, 5), c(10, 6);
  std::vector<int64_t> first, again, other;
  for (int i = 0; i < 10; ++i) {
    first.push_back(a.index(i));
    again.push_back(b.index(i));
    other.push_back(c.index(i));
  }
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);
  auto sorted = first;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sorted[i], i);
  std::vector<int64_t> second;
  for (int i = 10; i < 20; ++i) second.push_back(a.index(i));
  EXPECT_NE(first, second) << "each epoch is shuffled anew";
}

// The real-text check of issue 4: LoRA on Brown-corpus prose (fetched by scripts/fetch-test-data.sh)
// lowers the held-out loss of the byte-level fixture model.
TEST(TrainOnRealText, LoraLowersTheLossOnBrownCorpus) {
  Fixture f;
  const std::string corpus = test::source_dir() + "/tests/data/corpus";
  if (!std::filesystem::exists(corpus)) {
    ASSERT_EQ(std::getenv("CI"), nullptr) << "tests/data missing in CI: scripts/fetch-test-data.sh must run first";
    GTEST_SKIP() << "run scripts/fetch-test-data.sh for the real-text test";
  }
  std::vector<std::string> docs;
  for (const auto& e : std::filesystem::directory_iterator(corpus))
    if (e.path().filename().string().rfind("brown_", 0) == 0) docs.push_back(e.path().string());
  std::sort(docs.begin(), docs.end());
  ASSERT_GE(docs.size(), 2u);
  std::string train_text = io::read_file(docs[0]).substr(0, 6000);
  std::string eval_text = io::read_file(docs[1]).substr(0, 2000);
  const std::string tr = f.d.write("train.txt", train_text), ev = f.d.write("eval.txt", eval_text);
  auto r = test::run_cli("train --model " + f.model + " --data " + tr + " --eval-data " + ev + " --out " +
                         f.d.file("run") + " --targets all-linear --rank 8 --lr 3e-3 --steps 30 --batch-size 4 "
                         "--seq-len 64 --quiet");
  ASSERT_EQ(r.code, 0) << r.err;
  auto m = train::read_metrics(f.d.file("run/metrics.jsonl"));
  const double before = m.front()["eval_loss"].get<double>(), after = m.back()["eval_loss"].get<double>();
  EXPECT_LT(after, before - 1.0) << "eval loss " << before << " -> " << after;
}

}  // namespace

namespace {

TEST(EvalCli, TextLinesUseTheModelsTokenizer) {
  Fixture f;
  const std::string text = f.d.write("t.jsonl", "{\"text\": \"Hello\"}\n");
  const std::string ids = f.d.write("i.jsonl", "{\"input_ids\": [72, 101, 108, 108, 111, 257]}\n");
  auto a = test::run_cli("eval --model " + f.model + " --data " + text + " --json");
  auto b = test::run_cli("eval --model " + f.model + " --data " + ids + " --json");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out) << "byte-level tokenizer without BOS: \"Hello\" is those five ids, then EOS (257) as "
                              "training appends it";
  auto c = test::run_cli("eval --model " + test::model_fixture("llama") + " --data " + text);
  EXPECT_EQ(c.code, 2);
  EXPECT_NE(c.err.find("tokenizer"), std::string::npos) << c.err;
}

// One scoring path: `lowrank eval --seq-len L` gives train's --eval-data loss (before training) on
// the same file, for every data format train takes; prompt/completion lines score the completion.
TEST(EvalCli, EqualsTrainEvalDataOnEveryFormat) {
  Fixture f;
  const std::string data = f.d.write(
      "mixed.jsonl",
      "{\"text\": \"The quick brown fox jumps over the lazy dog, again and again and again.\"}\n"
      "{\"prompt\": \"Q: two and two?\\nA:\", \"completion\": \" four\"}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello there\"}]}\n"
      "{\"input_ids\": [1, 2, 3, 4, 5, 6, 7, 8], \"labels\": [-100, -100, -100, 4, 5, 6, 7, 8]}\n");
  auto ev = test::run_cli("eval --model " + f.model + " --data " + data + " --json --seq-len 32");
  ASSERT_EQ(ev.code, 0) << ev.err;
  const double eval_loss = nlohmann::json::parse(ev.out)["loss"].get<double>();
  auto tr = test::run_cli("train --model " + f.model + " --data " + data + " --eval-data " + data + " --out " +
                          f.d.file("run") + " --steps 1 --seq-len 32 --quiet");
  ASSERT_EQ(tr.code, 0) << tr.err;
  auto m = train::read_metrics(f.d.file("run/metrics.jsonl"));
  ASSERT_TRUE(m.front().contains("eval_loss"));
  EXPECT_EQ(m.front()["eval_loss"].get<double>(), eval_loss);
  // The completion alone is scored: scoring the prompt too changes the loss.
  const std::string whole = f.d.write("whole.jsonl", "{\"text\": \"Q: two and two?\\nA: four\"}\n");
  const std::string part = f.d.write("part.jsonl", "{\"prompt\": \"Q: two and two?\\nA:\", \"completion\": \" four\"}\n");
  auto a = test::run_cli("eval --model " + f.model + " --data " + whole + " --json");
  auto b = test::run_cli("eval --model " + f.model + " --data " + part + " --json");
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_LT(nlohmann::json::parse(b.out)["tokens"].get<int64_t>(), nlohmann::json::parse(a.out)["tokens"].get<int64_t>());
}

}  // namespace

namespace {

// A base model without a chat template learns a chat format: train --chat-template writes it next
// to the adapter, and eval, generate and merge then use it from there.
TEST(ChatTemplateCli, TrainedTemplateTravelsWithTheAdapter) {
  Fixture f;
  // The byte model without its template (as a base model would be).
  auto cfg = io::read_json(f.model + "/tokenizer_config.json");
  cfg.erase("chat_template");
  io::write_json_atomic(f.model + "/tokenizer_config.json", cfg);
  const std::string data = f.d.write(
      "chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n");
  const std::string common = "train --model " + f.model + " --data " + data + " --steps 1 --quiet --seq-len 64";
  auto none = test::run_cli(common + " --out " + f.d.file("none"));
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("chat template"), std::string::npos) << none.err;
  auto bad = test::run_cli(common + " --out " + f.d.file("bad") + " --chat-template nope");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("chatml"), std::string::npos) << bad.err;  // the message lists the built-ins
  ASSERT_EQ(test::run_cli(common + " --out " + f.d.file("run") + " --chat-template chatml").code, 0);
  EXPECT_EQ(io::read_file(f.d.file("run/chat_template.jinja")), *tok::builtin_chat_template("chatml"));
  // eval with the adapter picks its template up; the same loss as naming it.
  auto e1 = test::run_cli("eval --model " + f.model + " --adapter " + f.d.file("run") + " --data " + data + " --json");
  auto e2 = test::run_cli("eval --model " + f.model + " --adapter " + f.d.file("run") + " --data " + data +
                          " --json --chat-template chatml");
  ASSERT_EQ(e1.code, 0) << e1.err;
  EXPECT_EQ(e1.out, e2.out);
  // generate --chat likewise.
  const std::string gen = "generate --model " + f.model + " --adapter " + f.d.file("run") +
                          " --prompt hi --greedy --max-new-tokens 4 --chat";
  auto g1 = test::run_cli(gen), g2 = test::run_cli(gen + " --chat-template chatml");
  ASSERT_EQ(g1.code, 0) << g1.err;
  EXPECT_EQ(g1.out, g2.out);
  // merge carries it into the merged folder.
  ASSERT_EQ(test::run_cli("merge --model " + f.model + " --adapter " + f.d.file("run") + " --out " + f.d.file("merged")).code, 0);
  EXPECT_EQ(io::read_file(f.d.file("merged/chat_template.jinja")), *tok::builtin_chat_template("chatml"));
}

}  // namespace
