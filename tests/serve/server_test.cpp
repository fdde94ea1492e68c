// lowrank serve over real HTTP (cpp-httplib's client) with the bundled base model and two
// adapters trained here: concurrent requests over a mix of adapters and the base model equal
// `lowrank generate` for the same prompt and adapter, streamed replies concatenate to the same
// text, and every bad request gets its status while the server goes on answering.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <set>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lowrank/io/jsonl.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/model/model.h"
#include "lowrank/serve/server.h"
#include "test_paths.h"

using namespace lowrank;
using json = nlohmann::json;

namespace {

constexpr const char* kKey = "sekret";
constexpr int64_t kMaxTokens = 12;
constexpr size_t kBodyLimit = 64 * 1024;
constexpr int32_t kEos = 1;  // models/base's eos id

std::string base_dir() { return test::source_dir() + "/models/base"; }

struct HttpReply {
  int status = -1;
  std::string body;
  json j;  // the body parsed, when it is JSON
};

struct Expected {
  std::string text;
  int64_t tokens = 0;
  std::string finish_reason;
};

class ServeHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new io::testing::ScratchDir();
    // Two adapters that visibly pull the base model towards their texts.
    const std::pair<const char*, const char*> corpora[] = {
        {"cats", "The cat sat on the mat and the cat was happy. A cat likes milk. The cat sleeps all day."},
        {"rockets", "Rockets fly to the moon and back to the earth. The rocket engine burns fuel to reach orbit."}};
    for (const auto& [name, text] : corpora) {
      std::string lines;
      for (int i = 0; i < 8; ++i) lines += json{{"text", text}}.dump() + "\n";
      auto r = test::run_cli("train --model " + base_dir() + " --data " + dir_->write(std::string(name) + ".jsonl", lines) +
                             " --out " + dir_->file(name) +
                             " --targets all-linear --rank 4 --lr 1e-2 --steps 6 --batch-size 2 --seq-len 32 --dropout 0 --quiet");
      ASSERT_EQ(r.code, 0) << r.err;
    }
    model_ = new model::Model(model::Model::load(base_dir()));
    serve::ServerOptions o;
    o.model_name = "base";
    o.api_key = kKey;
    o.max_batch = 4;  // fewer than the concurrent requests: the rest queue
    o.max_body_bytes = kBodyLimit;
    o.enable_lora_loading = true;
    o.chat_template = "chatml";
    server_ = new serve::Server(*model_, tok::Tokenizer::load(base_dir()), o);
    server_->load_adapter("cats", dir_->file("cats"));
    server_->load_adapter("rockets", dir_->file("rockets"));
    port_ = server_->bind("127.0.0.1", 0);
    thread_ = new std::thread([] { server_->run(); });
  }
  static void TearDownTestSuite() {
    server_->shutdown();
    thread_->join();
    delete thread_;
    delete server_;
    delete model_;
    delete dir_;
  }

  static std::string adapter_dir(const std::string& model) { return model == "base" ? "" : dir_->file(model); }

  // `lowrank generate --input` for each line, with the model's adapter and `flags`.
  static std::vector<Expected> generate(const std::string& model, const std::vector<json>& lines, const std::string& flags) {
    static int calls = 0;
    const std::string in = dir_->file("in" + std::to_string(calls) + ".jsonl"), out = dir_->file("out" + std::to_string(calls++) + ".jsonl");
    std::string text;
    for (const auto& l : lines) text += l.dump() + "\n";
    dir_->write(std::filesystem::path(in).filename(), text);
    const std::string adapter = model == "base" ? "" : " --adapter " + adapter_dir(model);
    auto r = test::run_cli("generate --model " + base_dir() + adapter + " --input " + in + " --output " + out + " " + flags);
    EXPECT_EQ(r.code, 0) << r.err;
    std::vector<Expected> expected;
    io::for_each_jsonl(out, [&](int64_t, const json& rec) {
      const auto ids = rec["output_ids"].get<std::vector<int32_t>>();
      expected.push_back({rec["text"].get<std::string>(), static_cast<int64_t>(ids.size()),
                          !ids.empty() && ids.back() == kEos ? "stop" : "length"});
    });
    return expected;
  }

  static httplib::Headers auth(const std::string& key = kKey) {
    return key.empty() ? httplib::Headers{} : httplib::Headers{{"Authorization", std::string("Bearer ") + key}};
  }
  static HttpReply reply_of(const httplib::Result& r) {
    HttpReply h;
    if (!r) {
      h.body = "no reply: httplib error " + std::to_string(static_cast<int>(r.error()));
      return h;
    }
    h.status = r->status;
    h.body = r->body;
    h.j = json::parse(h.body, nullptr, false);
    return h;
  }
  static httplib::Client client() {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(300, 0);  // queued requests wait for a place in the batch
    return c;
  }
  static HttpReply post(const std::string& path, const std::string& body, const std::string& key = kKey) {
    auto c = client();
    return reply_of(c.Post(path.c_str(), auth(key), body, "application/json"));
  }
  static HttpReply get(const std::string& path, const std::string& key = kKey) {
    auto c = client();
    return reply_of(c.Get(path.c_str(), auth(key)));
  }
  // POSTs with "stream": true; returns the raw event stream. `keep_reading(received)` false
  // hangs up early.
  static std::string post_stream(const std::string& path, const json& body,
                                 const std::function<bool(const std::string&)>& keep_reading = {}) {
    auto c = client();
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.headers = auth();
    req.headers.emplace("Content-Type", "application/json");
    req.body = body.dump();
    std::string received;
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      received.append(data, n);
      return !keep_reading || keep_reading(received);
    };
    c.send(req);
    return received;
  }
  static double metric(const std::string& name) {
    const std::string text = get("/metrics", "").body;
    const auto at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stod(text.substr(at + name.size() + 2));
  }

  static io::testing::ScratchDir* dir_;
  static model::Model* model_;
  static serve::Server* server_;
  static std::thread* thread_;
  static int port_;
};

io::testing::ScratchDir* ServeHttp::dir_ = nullptr;
model::Model* ServeHttp::model_ = nullptr;
serve::Server* ServeHttp::server_ = nullptr;
std::thread* ServeHttp::thread_ = nullptr;
int ServeHttp::port_ = 0;

// An event stream's JSON chunks, checking that it ends with "data: [DONE]".
std::vector<json> stream_chunks(const std::string& events) {
  std::vector<std::string> data;
  for (size_t at = 0; (at = events.find("data: ", at)) != std::string::npos;) {
    const auto end = events.find("\n\n", at);
    data.push_back(events.substr(at + 6, end - at - 6));
    at = end;
  }
  EXPECT_FALSE(data.empty());
  if (data.empty()) return {};
  EXPECT_EQ(data.back(), "[DONE]") << events;
  std::vector<json> chunks;
  for (size_t i = 0; i + 1 < data.size(); ++i) chunks.push_back(json::parse(data[i]));
  return chunks;
}

// The text of an event stream's chunks, checking its shape on the way.
std::string streamed_text(const std::string& events, bool chat, std::string* finish_reason, json* usage) {
  std::string text;
  for (const json& chunk : stream_chunks(events)) {
    if (chunk.contains("usage")) {
      *usage = chunk["usage"];
      continue;
    }
    const json& choice = chunk["choices"][0];
    const json piece = chat ? choice["delta"].value("content", json("")) : choice["text"];
    text += piece.get<std::string>();
    if (!choice["finish_reason"].is_null()) *finish_reason = choice["finish_reason"];
  }
  return text;
}

TEST_F(ServeHttp, ConcurrentRepliesOverAdaptersEqualGenerate) {
  const std::vector<std::string> models = {"base", "cats", "rockets"};
  const auto tk = tok::Tokenizer::load(base_dir());
  // Prompts as text and as token ids (what /v1/completions takes both ways).
  std::vector<json> prompts = {"The", "Once upon a time", "def main():", "The function returns", "A cat", "In the beginning"};
  for (const char* text : {"Rockets fly", "The cat sat on", "It is"}) prompts.push_back(tk.encode(text, true));
  std::vector<json> gen_lines;
  for (const auto& p : prompts) gen_lines.push_back(p.is_string() ? json{{"prompt", p}} : json{{"input_ids", p}});
  const std::string greedy = "--greedy --max-new-tokens " + std::to_string(kMaxTokens);
  const std::string chat_question = "Where does the cat sleep?";
  const std::string sampled = "--temperature 0.9 --top-k 40 --top-p 0.95 --seed 11 --max-new-tokens " + std::to_string(kMaxTokens);

  std::map<std::string, std::vector<Expected>> expected, expected_chat;
  for (const auto& m : models) {
    expected[m] = generate(m, gen_lines, greedy);
    expected_chat[m] = generate(m, {json{{"prompt", chat_question}}}, greedy + " --chat --chat-template chatml");
  }
  const Expected expected_sampled = generate("cats", {gen_lines[0]}, sampled).at(0);
  // The adapters change the replies: a reply routed to the wrong model cannot pass.
  int differ = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    differ += (expected["base"][i].text != expected["cats"][i].text) + (expected["cats"][i].text != expected["rockets"][i].text);
  EXPECT_GE(differ, static_cast<int>(prompts.size()));

  struct Call {
    std::string model;
    size_t prompt = 0;
    enum { Plain, Stream, Chat, Sampled } kind = Plain;
    HttpReply reply;
    std::string events;
  };
  std::vector<Call> calls;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (const auto& m : models) calls.push_back({m, i});
  for (const auto& m : models) {
    calls.push_back({m, 1, Call::Stream});
    calls.push_back({m, 0, Call::Chat});
  }
  calls.push_back({"cats", 0, Call::Sampled});
  ASSERT_GE(calls.size(), 24u);

  std::vector<std::thread> threads;
  for (auto& c : calls)
    threads.emplace_back([&c, &prompts, &chat_question] {
      json body = {{"model", c.model}, {"max_tokens", kMaxTokens}, {"temperature", 0}};
      if (c.kind == Call::Chat) {
        body["messages"] = json::array({{{"role", "user"}, {"content", chat_question}}});
        c.reply = post("/v1/chat/completions", body.dump());
        return;
      }
      body["prompt"] = prompts[c.prompt];
      if (c.kind == Call::Sampled) body.update({{"temperature", 0.9}, {"top_k", 40}, {"top_p", 0.95}, {"seed", 11}});
      if (c.kind == Call::Stream) {
        body.update({{"stream", true}, {"stream_options", {{"include_usage", true}}}});
        c.events = post_stream("/v1/completions", body);
        return;
      }
      c.reply = post("/v1/completions", body.dump());
    });
  for (auto& t : threads) t.join();

  for (const auto& c : calls) {
    const std::string what = c.model + " prompt " + prompts[c.prompt].dump();
    if (c.kind == Call::Stream) {
      std::string finish;
      json usage;
      EXPECT_EQ(streamed_text(c.events, false, &finish, &usage), expected[c.model][c.prompt].text) << what << "\n" << c.events;
      EXPECT_EQ(finish, expected[c.model][c.prompt].finish_reason) << what;
      EXPECT_EQ(usage.value("completion_tokens", -1), expected[c.model][c.prompt].tokens) << what;
      continue;
    }
    ASSERT_EQ(c.reply.status, 200) << what << ": " << c.reply.body;
    const json& r = c.reply.j;
    EXPECT_EQ(r["model"], c.model);
    const Expected& want = c.kind == Call::Chat      ? expected_chat[c.model][0]
                           : c.kind == Call::Sampled ? expected_sampled
                                                     : expected[c.model][c.prompt];
    const json& choice = r["choices"][0];
    EXPECT_EQ(c.kind == Call::Chat ? choice["message"]["content"] : choice["text"], want.text) << what;
    EXPECT_EQ(choice["finish_reason"], want.finish_reason) << what;
    EXPECT_EQ(r["usage"]["completion_tokens"], want.tokens) << what;
    EXPECT_EQ(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"].get<int64_t>() + want.tokens) << what;
  }
  if (prompts[6].is_array()) {  // token-id prompts are used as they are
    const auto& r = calls[6 * models.size()].reply.j;
    EXPECT_EQ(r["usage"]["prompt_tokens"], prompts[6].size());
  }
  // Requests shared decode rounds (continuous batching), never more than --max-batch at once.
  EXPECT_EQ(metric("lowrank_max_batch_size"), 4);
  EXPECT_GT(metric("lowrank_decode_round_sequences_total"), 1.5 * metric("lowrank_decode_rounds_total"));
  EXPECT_EQ(metric("lowrank_running_sequences"), 0);
  EXPECT_EQ(metric("lowrank_queued_sequences"), 0);
  // Every sequence is prefilled in one round; more requests than --max-batch waited in the queue;
  // the rounds' compute was timed by kind; the CPU has no device allocator to report.
  const double prefills = metric("lowrank_prefill_rounds_total");
  EXPECT_GE(prefills, static_cast<double>(calls.size()) / 4) << "at most --max-batch prompts a round";
  EXPECT_LE(prefills, metric("lowrank_decode_rounds_total"));
  EXPECT_GT(metric("lowrank_round_seconds_total{kind=\"prefill\"}"), 0);
  EXPECT_GT(metric("lowrank_round_seconds_total{kind=\"decode\"}"), 0);
  EXPECT_GT(metric("lowrank_queue_seconds_total"), 0) << calls.size() << " requests for a batch of 4";
  EXPECT_EQ(get("/metrics", "").body.find("lowrank_device_"), std::string::npos);
}

TEST_F(ServeHttp, StopStringsCutTheReply) {
  auto full = post("/v1/completions", json{{"model", "cats"}, {"prompt", "The"}, {"max_tokens", kMaxTokens}, {"temperature", 0}}.dump());
  ASSERT_EQ(full.status, 200) << full.body;
  const std::string text = full.j["choices"][0]["text"];
  ASSERT_GE(text.size(), 8u) << text;
  const std::string stop = text.substr(4, 3);
  auto cut = post("/v1/completions", json{{"model", "cats"}, {"prompt", "The"}, {"max_tokens", kMaxTokens}, {"temperature", 0},
                                         {"stop", {"never there", stop}}}.dump());
  ASSERT_EQ(cut.status, 200) << cut.body;
  EXPECT_EQ(cut.j["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(cut.j["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(cut.j["usage"]["completion_tokens"].get<int64_t>(), full.j["usage"]["completion_tokens"].get<int64_t>());
  std::string finish;
  json usage;
  const std::string streamed = streamed_text(
      post_stream("/v1/chat/completions", {{"model", "cats"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                           {"max_tokens", kMaxTokens}, {"temperature", 0}, {"stream", true}}),
      true, &finish, &usage);
  auto plain = post("/v1/chat/completions", json{{"model", "cats"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                                 {"max_tokens", kMaxTokens}, {"temperature", 0}}.dump());
  EXPECT_EQ(streamed, plain.j["choices"][0]["message"]["content"]);
  EXPECT_EQ(finish, plain.j["choices"][0]["finish_reason"]);
}

TEST_F(ServeHttp, BadRequestsGetTheirStatusAndTheServerGoesOn) {
  const std::string good = json{{"model", "rockets"}, {"prompt", "The"}, {"max_tokens", 6}, {"temperature", 0}}.dump();
  const HttpReply before = post("/v1/completions", good);
  ASSERT_EQ(before.status, 200) << before.body;

  auto expect_error = [](const HttpReply& r, int status, const std::string& what) {
    EXPECT_EQ(r.status, status) << what << ": " << r.body;
    ASSERT_TRUE(r.j.is_object() && r.j.contains("error")) << what << ": " << r.body;
    EXPECT_TRUE(r.j["error"]["message"].is_string()) << what;
    EXPECT_TRUE(r.j["error"]["type"].is_string()) << what;
    EXPECT_EQ(r.j["error"]["code"], status) << what;
  };
  expect_error(post("/v1/completions", good, ""), 401, "no API key");
  expect_error(post("/v1/completions", good, "wrong"), 401, "wrong API key");
  expect_error(get("/v1/models", ""), 401, "models without a key");
  EXPECT_EQ(get("/health", "").status, 200);
  expect_error(post("/v1/completions", "{not json"), 400, "not JSON");
  expect_error(post("/v1/completions", "[1]"), 400, "not an object");
  expect_error(post("/v1/completions", std::string(50, '[') + std::string(50, ']')), 400, "too deep");
  expect_error(post("/v1/completions", R"({"model": "base"})"), 400, "no prompt");
  expect_error(post("/v1/chat/completions", R"({"model": "base"})"), 400, "no messages");
  expect_error(post("/v1/completions", R"({"prompt": 5})"), 400, "prompt a number");
  expect_error(post("/v1/completions", R"({"prompt": "x", "max_tokens": "ten"})"), 400, "max_tokens a string");
  expect_error(post("/v1/completions", R"({"prompt": "x", "temperature": "hot"})"), 400, "temperature a string");
  expect_error(post("/v1/chat/completions", R"({"messages": "hi"})"), 400, "messages a string");
  expect_error(post("/v1/completions", R"({"prompt": [5, 99999]})"), 400, "id outside the vocabulary");
  expect_error(post("/v1/completions", R"({"prompt": "x", "max_tokens": 5000})"), 400, "beyond the context");
  expect_error(post("/v1/completions", json{{"prompt", std::vector<int>(1024, 5)}, {"max_tokens", 1}}.dump()), 400,
               "prompt fills the context");
  expect_error(post("/v1/completions", R"({"model": "dogs", "prompt": "x"})"), 404, "unknown model");
  expect_error(post("/v1/completions", R"({"prompt": "x", "logprobs": 21})"), 400, "logprobs over 20");
  expect_error(post("/v1/completions", R"({"prompt": ["x", [5]]})"), 400, "prompt list of mixed kinds");
  expect_error(post("/v1/completions", R"({"prompt": [[5], [5, 99999]]})"), 400, "an id outside the vocabulary in a list");
  expect_error(post("/v1/completions", json{{"prompt", {std::vector<int>{5}, std::vector<int>(1024, 5)}}, {"max_tokens", 1}}.dump()),
               400, "one prompt of a list fills the context");
  expect_error(post("/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"echo", true}}.dump()),
               400, "echo in chat");
  // prompt + max_tokens overflowed int64 and passed the context check: a 500 from the compute.
  expect_error(post("/v1/completions", R"({"prompt": "x", "max_tokens": 9223372036854775807})"), 400,
               "max_tokens near INT64_MAX");
  expect_error(post("/v1/chat/completions", json{{"model", "cats"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                                  {"max_tokens", std::numeric_limits<int64_t>::max() - 1}}.dump()), 400,
               "chat max_tokens near INT64_MAX");
  {  // curl -d sends application/x-www-form-urlencoded, which httplib caps at 8 KiB whatever the limit
    auto c = client();
    const HttpReply form = reply_of(c.Post("/v1/completions", auth(), json{{"prompt", std::string(9000, 'a')}}.dump(),
                                           "application/x-www-form-urlencoded"));
    expect_error(form, 413, "form-encoded body over 8 KiB");
    EXPECT_NE(form.body.find("application/json"), std::string::npos) << form.body;
  }

  expect_error(post("/v1/completions", json{{"prompt", std::string(kBodyLimit + 10, 'a')}}.dump()), 413, "body over the limit");
  expect_error(get("/v1/nothing"), 404, "unknown endpoint");

  // Adapters loaded and unloaded at run time.
  expect_error(post("/v1/load_lora_adapter", R"({"lora_name": "x"})"), 400, "load without a path");
  expect_error(post("/v1/load_lora_adapter", json{{"lora_name", "x"}, {"lora_path", dir_->file("nowhere")}}.dump()), 400,
               "load from a folder that is no adapter");
  expect_error(post("/v1/load_lora_adapter", json{{"lora_name", "cats"}, {"lora_path", dir_->file("rockets")}}.dump()), 400,
               "load under a taken name");
  ASSERT_EQ(post("/v1/load_lora_adapter", json{{"lora_name", "rockets2"}, {"lora_path", dir_->file("rockets")}}.dump()).status, 200);
  auto models = get("/v1/models");
  ASSERT_EQ(models.status, 200);
  std::vector<std::string> ids;
  for (const auto& m : models.j["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"base", "cats", "rockets", "rockets2"}));
  json renamed = json::parse(good);
  renamed["model"] = "rockets2";
  auto via_new_name = post("/v1/completions", renamed.dump());
  ASSERT_EQ(via_new_name.status, 200) << via_new_name.body;
  EXPECT_EQ(via_new_name.j["choices"][0]["text"], before.j["choices"][0]["text"]);
  EXPECT_EQ(post("/v1/unload_lora_adapter", R"({"lora_name": "rockets2"})").status, 200);
  expect_error(post("/v1/completions", renamed.dump()), 404, "unloaded adapter");
  expect_error(post("/v1/unload_lora_adapter", R"({"lora_name": "rockets2"})"), 404, "unload twice");

  // A client that hangs up mid-stream frees its sequence long before its max_tokens.
  const double generated = metric("lowrank_generation_tokens_total");
  post_stream("/v1/completions", {{"prompt", "The"}, {"max_tokens", 1000}, {"temperature", 0}, {"stream", true}},
              [](const std::string& received) { return received.find("\n\n") == std::string::npos; });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (metric("lowrank_running_sequences") != 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(metric("lowrank_running_sequences"), 0);
  EXPECT_LT(metric("lowrank_generation_tokens_total") - generated, 500);
  EXPECT_NE(get("/metrics", "").body.find("lowrank_requests_finished_total{finish_reason=\"abort\"} 1"), std::string::npos);

  // Still answering, and the same as before.
  const HttpReply after = post("/v1/completions", good);
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(after.j["choices"][0]["text"], before.j["choices"][0]["text"]);
  const std::string metrics = get("/metrics", "").body;
  for (const char* code : {"400", "401", "404", "413"})
    EXPECT_NE(metrics.find(std::string("lowrank_http_responses_total{code=\"") + code + "\"}"), std::string::npos) << code;
}

// Streamed completion chunks gathered by choice index: text, tokens and token_logprobs.
struct StreamedChoice {
  std::string text, finish_reason;
  json tokens = json::array(), token_logprobs = json::array();
};
std::map<int64_t, StreamedChoice> streamed_choices(const std::string& events) {
  std::map<int64_t, StreamedChoice> out;
  for (const json& chunk : stream_chunks(events)) {
    for (const json& c : chunk["choices"]) {
      StreamedChoice& s = out[c["index"].get<int64_t>()];
      s.text += c["text"].get<std::string>();
      if (!c["finish_reason"].is_null()) s.finish_reason = c["finish_reason"];
      if (c["logprobs"].is_null()) continue;  // a chunk without tokens (the finish)
      for (const auto& t : c["logprobs"]["tokens"]) s.tokens.push_back(t);
      for (const auto& l : c["logprobs"]["token_logprobs"]) s.token_logprobs.push_back(l);
    }
  }
  return out;
}

// What lm-evaluation-harness's local-completions does to score a continuation: prompts as lists
// of token ids, echo, logprobs 1, max_tokens 1; it sums token_logprobs[ctxlen:-1] and calls the
// continuation greedy when each of those is the largest of its top_logprobs. The sums equal the
// model's own negative log-likelihood with the adapter (what `lowrank eval` sums).
TEST_F(ServeHttp, EchoWithLogprobsScoresPromptsAsLmEvalReadsThem) {
  const auto tk = tok::Tokenizer::load(base_dir());
  model::Model m = model::Model::load(base_dir());
  lora::AdapterSet cats({adapter_dir("cats")}, m);
  const std::vector<std::string> texts = {"The cat sat on the mat", "Rockets fly to the moon and back"};
  json prompts = json::array();
  for (const auto& t : texts) prompts.push_back(tk.encode(t, true));
  const HttpReply r = post("/v1/completions", json{{"model", "cats"}, {"prompt", prompts}, {"echo", true}, {"logprobs", 1},
                                                   {"max_tokens", 1}, {"temperature", 0}, {"seed", 1234}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.j["choices"].size(), texts.size());
  int64_t prompt_tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const json& choice = r.j["choices"][i];
    EXPECT_EQ(choice["index"], i);
    const auto ids = prompts[i].get<std::vector<int32_t>>();
    const json& lp = choice["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), ids.size() + 1) << "the prompt's tokens and the one generated";
    ASSERT_EQ(lp["top_logprobs"].size(), ids.size() + 1);
    ASSERT_EQ(lp["tokens"].size(), ids.size() + 1);
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    EXPECT_EQ(lp["tokens"][1], tk.decode({ids[1]}));
    EXPECT_EQ(lp["text_offset"][0], 0);
    // lm-eval's reading, with the whole prompt after its first token as the "continuation".
    double sum = 0;
    bool greedy = true;
    for (size_t t = 1; t < ids.size(); ++t) {
      const double l = lp["token_logprobs"][t];
      sum += l;
      double best = -1e30;
      ASSERT_LE(lp["top_logprobs"][t].size(), 2u) << "the token itself and the 1 alternative asked for";
      for (const auto& [text, v] : lp["top_logprobs"][t].items()) best = std::max(best, v.get<double>());
      greedy = greedy && l == best;
    }
    int64_t n = 0;
    const double nll = model::sequence_nll(m, ids, &n, cats.hook());
    EXPECT_EQ(n, static_cast<int64_t>(ids.size()) - 1);
    EXPECT_NEAR(sum, -nll, 1e-4 * nll) << texts[i];
    // Greedy when every next token is the argmax of the model's logits there.
    const Tensor logits = m.logits({ids, 1, static_cast<int64_t>(ids.size())}, cats.hook());
    const int64_t V = logits.dim(1);
    bool argmax_every = true;
    for (size_t t = 1; t < ids.size(); ++t) {
      const float* row = logits.f32() + (t - 1) * V;
      argmax_every = argmax_every && std::max_element(row, row + V) - row == ids[t];
    }
    EXPECT_EQ(greedy, argmax_every) << texts[i];
    EXPECT_EQ(greedy, i == 0) << "the cats adapter learned its text; the other is not its greedy continuation";
    // The generated token is the greedy one: its logprob is the largest.
    const double last = lp["token_logprobs"].back();
    for (const auto& [text, v] : lp["top_logprobs"].back().items()) EXPECT_LE(v.get<double>(), last) << text;
    EXPECT_EQ(choice["text"].get<std::string>().rfind(tk.decode(ids), 0), 0u) << "echo: the prompt first";
    prompt_tokens += static_cast<int64_t>(ids.size());
  }
  EXPECT_EQ(r.j["usage"]["prompt_tokens"], prompt_tokens);
  EXPECT_EQ(r.j["usage"]["completion_tokens"], 2);

  // max_tokens 0: the prompt alone, scored (vLLM's echo without generation).
  const HttpReply only = post("/v1/completions", json{{"model", "cats"}, {"prompt", texts[0]}, {"echo", true}, {"logprobs", 0},
                                                      {"max_tokens", 0}}.dump());
  ASSERT_EQ(only.status, 200) << only.body;
  const json& choice = only.j["choices"][0];
  EXPECT_EQ(choice["text"], texts[0]);
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_EQ(choice["logprobs"]["token_logprobs"].size(), prompts[0].size());
  EXPECT_NEAR(choice["logprobs"]["token_logprobs"].back().get<double>(),
              r.j["choices"][0]["logprobs"]["token_logprobs"][prompts[0].size() - 1].get<double>(), 1e-5)
      << "another prefill batch: the same values up to the last bits";
  EXPECT_EQ(only.j["usage"]["completion_tokens"], 0);
  // Echo without logprobs: the text only.
  const HttpReply plain = post("/v1/completions", json{{"prompt", texts[1]}, {"echo", true}, {"max_tokens", 3}, {"temperature", 0}}.dump());
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(plain.j["choices"][0]["text"].get<std::string>().rfind(texts[1], 0), 0u);
  EXPECT_TRUE(plain.j["choices"][0]["logprobs"].is_null());
}

// Logprobs of generated tokens, plain and streamed, for several prompts in one request: the same
// replies as without logprobs, the streamed pieces adding up to the plain reply, and chat's form.
TEST_F(ServeHttp, LogprobsOfGeneratedTokensPlainStreamedAndChat) {
  const json prompts = {"The cat", "Rockets"};
  const json base = {{"model", "rockets"}, {"prompt", prompts}, {"max_tokens", kMaxTokens}, {"temperature", 0}};
  const HttpReply without = post("/v1/completions", base.dump());
  json with_logprobs = base;
  with_logprobs["logprobs"] = 3;
  const HttpReply with = post("/v1/completions", with_logprobs.dump());
  ASSERT_EQ(without.status, 200) << without.body;
  ASSERT_EQ(with.status, 200) << with.body;
  with_logprobs.update({{"stream", true}, {"stream_options", {{"include_usage", true}}}});
  const auto streamed = streamed_choices(post_stream("/v1/completions", with_logprobs));
  ASSERT_EQ(streamed.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const json& c = with.j["choices"][i];
    EXPECT_EQ(c["text"], without.j["choices"][i]["text"]) << "logprobs do not change the reply";
    const json& lp = c["logprobs"];
    const auto generated = without.j["usage"]["completion_tokens"].get<size_t>();
    EXPECT_GE(lp["tokens"].size(), 1u);
    std::string joined;
    for (size_t t = 0; t < lp["tokens"].size(); ++t) {
      if (t > 0) EXPECT_EQ(lp["text_offset"][t], lp["text_offset"][t - 1].get<int64_t>() + static_cast<int64_t>(
                                                      lp["tokens"][t - 1].get<std::string>().size()));  // ASCII here
      joined += lp["tokens"][t].get<std::string>();
      EXPECT_GE(lp["top_logprobs"][t].size(), 3u);
      EXPECT_LE(lp["top_logprobs"][t].size(), 4u);
      double best = -1e30;
      for (const auto& [text, v] : lp["top_logprobs"][t].items()) best = std::max(best, v.get<double>());
      EXPECT_EQ(lp["token_logprobs"][t].get<double>(), best) << "greedy: the most likely token";
    }
    EXPECT_LE(lp["tokens"].size(), generated);
    EXPECT_EQ(joined.rfind(c["text"].get<std::string>(), 0), 0u) << "the tokens spell the reply (and an eos)";
    const StreamedChoice& s = streamed.at(static_cast<int64_t>(i));
    EXPECT_EQ(s.text, c["text"]);
    EXPECT_EQ(s.finish_reason, c["finish_reason"]);
    EXPECT_EQ(s.tokens, lp["tokens"]);
    // The same values up to the last bits: which sequences share a decode round (and so the
    // batched GEMMs' shapes) depends on when each joined, in the two requests.
    ASSERT_EQ(s.token_logprobs.size(), lp["token_logprobs"].size());
    for (size_t t = 0; t < s.token_logprobs.size(); ++t)
      EXPECT_NEAR(s.token_logprobs[t].get<double>(), lp["token_logprobs"][t].get<double>(), 1e-5) << t;
  }
  // Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
  const json messages = {{{"role", "user"}, {"content", "Where does the cat sleep?"}}};
  const HttpReply chat = post("/v1/chat/completions", json{{"model", "cats"}, {"messages", messages}, {"max_tokens", 6},
                                                          {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 2}}.dump());
  ASSERT_EQ(chat.status, 200) << chat.body;
  const json& content = chat.j["choices"][0]["logprobs"]["content"];
  EXPECT_EQ(content.size(), chat.j["usage"]["completion_tokens"].get<size_t>());
  for (const json& t : content) {
    ASSERT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_EQ(t["logprob"], t["top_logprobs"][0]["logprob"]) << "greedy: the most likely token";
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
  }
  const HttpReply chat_plain = post("/v1/chat/completions", json{{"model", "cats"}, {"messages", messages}, {"max_tokens", 6},
                                                                {"temperature", 0}}.dump());
  EXPECT_EQ(chat.j["choices"][0]["message"], chat_plain.j["choices"][0]["message"]);
  EXPECT_TRUE(chat_plain.j["choices"][0]["logprobs"].is_null());
}

// OpenAI's and vLLM's sampling parameters beyond temperature/top-k/top-p: several choices per
// prompt (n), stop_token_ids, ignore_eos, min_tokens, logit_bias, and the penalties and min_p,
// which `generate` takes too and answers the same.
TEST_F(ServeHttp, ChoicesStopIdsEosControlsLogitBiasAndPenalties) {
  const auto tk = tok::Tokenizer::load(base_dir());
  auto completion = [](json body) {
    body["model"] = "cats";
    body["prompt"] = "Once upon a time";
    const HttpReply r = post("/v1/completions", body.dump());
    EXPECT_EQ(r.status, 200) << body.dump() << ": " << r.body;
    return r.j;
  };
  // n: choice j of a seeded request is the request with seed + j.
  const json three = completion({{"max_tokens", 8}, {"temperature", 0.9}, {"seed", 5}, {"n", 3}});
  ASSERT_EQ(three["choices"].size(), 3u);
  std::set<std::string> texts;
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(three["choices"][j]["index"], j);
    const json one = completion({{"max_tokens", 8}, {"temperature", 0.9}, {"seed", 5 + j}});
    EXPECT_EQ(three["choices"][j]["text"], one["choices"][0]["text"]) << j;
    texts.insert(three["choices"][j]["text"].get<std::string>());
  }
  EXPECT_GT(texts.size(), 1u) << "three seeds, one text";
  EXPECT_EQ(three["usage"]["prompt_tokens"], 3 * tk.encode("Once upon a time", true).size());

  // The eos made the argmax by logit_bias: the reply ends at once ("stop"); with ignore_eos it
  // goes on to max_tokens (eos ids are special: not in the text); min_tokens holds the eos back.
  const json eos_bias = {{std::to_string(kEos), 100}};
  const json at_once = completion({{"max_tokens", 16}, {"temperature", 0}, {"logit_bias", eos_bias}});
  EXPECT_EQ(at_once["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(at_once["usage"]["completion_tokens"], 1);
  const json ignoring_forced = completion({{"max_tokens", 16}, {"temperature", 0}, {"logit_bias", eos_bias}, {"ignore_eos", true}});
  EXPECT_EQ(ignoring_forced["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(ignoring_forced["usage"]["completion_tokens"], 16);
  const json held = completion({{"max_tokens", 16}, {"temperature", 0}, {"logit_bias", eos_bias}, {"min_tokens", 3}});
  EXPECT_EQ(held["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(held["usage"]["completion_tokens"], 4) << "three others, then the eos";
  const json ignoring = completion({{"max_tokens", 16}, {"temperature", 0}, {"ignore_eos", true}});
  EXPECT_EQ(ignoring["usage"]["completion_tokens"], 16);
  // stop_token_ids: the reply's own third token ends it there.
  const std::vector<int32_t> ids = tk.encode(ignoring["choices"][0]["text"].get<std::string>(), false);
  ASSERT_GE(ids.size(), 4u);
  const json cut = completion({{"max_tokens", 16}, {"temperature", 0}, {"stop_token_ids", {ids[2]}}});
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop");
  EXPECT_LE(cut["usage"]["completion_tokens"].get<int64_t>(), 3 + 1) << cut.dump();
  // logit_bias: +100 on one token makes it the argmax at every step.
  const int32_t forced = tk.encode(" rocket", false).at(0);
  const json biased = completion({{"max_tokens", 4}, {"temperature", 0}, {"ignore_eos", true},
                                  {"logit_bias", {{std::to_string(forced), 100}}}});
  EXPECT_EQ(biased["choices"][0]["text"], tk.decode({forced, forced, forced, forced}));

  // The penalties and min_p: the same tokens as `generate` with the same options and seed.
  const std::string flags = " --temperature 0.9 --seed 11 --min-p 0.05 --presence-penalty 0.8 --frequency-penalty 0.4";
  const Expected want = generate("cats", {json{{"prompt", "Once upon a time"}}}, flags + " --max-new-tokens 12").at(0);
  const json got = completion({{"max_tokens", 12}, {"temperature", 0.9}, {"seed", 11}, {"min_p", 0.05},
                               {"presence_penalty", 0.8}, {"frequency_penalty", 0.4}});
  EXPECT_EQ(got["choices"][0]["text"], want.text);
  EXPECT_EQ(got["usage"]["completion_tokens"], want.tokens);
  // Greedy too: the base model's reply repeats tokens, which the penalties push down.
  json base_body = {{"model", "base"}, {"prompt", "The function returns"}, {"max_tokens", 16}, {"temperature", 0}, {"ignore_eos", true}};
  const HttpReply unpenalized = post("/v1/completions", base_body.dump());
  base_body.update({{"presence_penalty", 1.5}, {"frequency_penalty", 1.5}});
  const HttpReply penalized = post("/v1/completions", base_body.dump());
  ASSERT_EQ(penalized.status, 200) << penalized.body;
  const auto repeats = [&](const HttpReply& r) {
    const auto t = tk.encode(r.j["choices"][0]["text"].get<std::string>(), false);
    return t.size() - std::set<int32_t>(t.begin(), t.end()).size();
  };
  EXPECT_GT(repeats(unpenalized), 0u) << unpenalized.body;
  EXPECT_LT(repeats(penalized), repeats(unpenalized)) << penalized.body;

  // Chat with n, streamed: each choice opens with its role chunk and spells the plain reply's choice.
  const json messages = {{{"role", "user"}, {"content", "Where does the cat sleep?"}}};
  const json chat_body = {{"model", "cats"}, {"messages", messages}, {"max_tokens", 6}, {"temperature", 0.9}, {"seed", 3}, {"n", 2}};
  const HttpReply chat_plain = post("/v1/chat/completions", chat_body.dump());
  ASSERT_EQ(chat_plain.status, 200) << chat_plain.body;
  json chat_stream = chat_body;
  chat_stream["stream"] = true;
  const std::string events = post_stream("/v1/chat/completions", chat_stream);
  std::map<int64_t, std::string> roles, contents;
  for (const json& chunk : stream_chunks(events)) {
    for (const json& c : chunk["choices"]) {
      const int64_t i = c["index"];
      if (c["delta"].contains("role")) roles[i] += c["delta"]["role"].get<std::string>();
      contents[i] += c["delta"].value("content", std::string());
    }
  }
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_EQ(roles[i], "assistant") << i << "\n" << events;
    EXPECT_EQ(contents[i], chat_plain.j["choices"][i]["message"]["content"]) << i;
  }

  for (const char* body : {R"({"prompt": "x", "n": 0})", R"({"prompt": "x", "n": 65})", R"({"prompt": "x", "min_p": 1.5})",
                           R"({"prompt": "x", "presence_penalty": 3})", R"({"prompt": "x", "frequency_penalty": -2.5})",
                           R"({"prompt": "x", "logit_bias": {"abc": 1}})", R"({"prompt": "x", "logit_bias": {"5": 200}})",
                           R"({"prompt": "x", "logit_bias": {"99999": 1}})", R"({"prompt": "x", "logit_bias": [1]})",
                           R"({"prompt": "x", "stop_token_ids": [99999]})", R"({"prompt": "x", "stop_token_ids": ["a"]})",
                           R"({"prompt": "x", "min_tokens": -1})", R"({"prompt": "x", "ignore_eos": "yes"})"}) {
    const HttpReply r = post("/v1/completions", body);
    EXPECT_EQ(r.status, 400) << body << ": " << r.body;
  }
  EXPECT_EQ(post("/v1/completions", json{{"prompt", std::vector<std::string>(20, "x")}, {"n", 64}}.dump()).status, 400)
      << "20 prompts × 64 choices";
}

// vLLM's tokenizer endpoints (what lm-evaluation-harness's remote tokenizer calls): the server's
// tokenizer and chat template, outside /v1 and its API key.
TEST_F(ServeHttp, ContinuousUsageStatsInEveryChunk) {
  // vLLM's stream_options.continuous_usage_stats (with include_usage): every chunk carries the
  // usage so far; the last one equals the reply's usage without streaming.
  const json base = {{"model", "cats"}, {"prompt", "The cat"}, {"max_tokens", kMaxTokens}, {"temperature", 0}};
  const HttpReply plain = post("/v1/completions", base.dump());
  ASSERT_EQ(plain.status, 200) << plain.body;
  json body = base;
  body.update({{"stream", true}, {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}});
  const auto chunks = stream_chunks(post_stream("/v1/completions", body));
  ASSERT_GE(chunks.size(), 2u);
  int64_t previous = 0;
  for (const json& chunk : chunks) {
    ASSERT_TRUE(chunk.contains("usage")) << chunk;
    const json& u = chunk["usage"];
    EXPECT_EQ(u["prompt_tokens"], plain.j["usage"]["prompt_tokens"]) << chunk;
    EXPECT_GE(u["completion_tokens"].get<int64_t>(), previous) << chunk;
    EXPECT_EQ(u["total_tokens"].get<int64_t>(), u["prompt_tokens"].get<int64_t>() + u["completion_tokens"].get<int64_t>());
    previous = u["completion_tokens"].get<int64_t>();
  }
  EXPECT_EQ(chunks.back()["usage"], plain.j["usage"]);
  EXPECT_EQ(chunks[chunks.size() - 2]["usage"], plain.j["usage"]) << "the finishing chunk counts every token";
  // A chat stream's role chunk has used no token yet.
  json chat = {{"model", "cats"}, {"max_tokens", 4}, {"temperature", 0}, {"stream", true},
               {"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
               {"stream_options", {{"include_usage", true}, {"continuous_usage_stats", true}}}};
  const auto chat_chunks = stream_chunks(post_stream("/v1/chat/completions", chat));
  ASSERT_FALSE(chat_chunks.empty());
  EXPECT_EQ(chat_chunks.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(chat_chunks.front()["usage"]["completion_tokens"], 0);
  // Without include_usage the option does nothing (vLLM's rule): no chunk has a usage.
  body["stream_options"] = {{"continuous_usage_stats", true}};
  for (const json& chunk : stream_chunks(post_stream("/v1/completions", body))) EXPECT_FALSE(chunk.contains("usage")) << chunk;
}

TEST_F(ServeHttp, TokenizeDetokenizeAndTokenizerInfo) {
  const auto tk = tok::Tokenizer::load(base_dir());
  const std::string text = "The cat sat on the mat.";
  const HttpReply with = post("/tokenize", json{{"prompt", text}}.dump(), "");
  ASSERT_EQ(with.status, 200) << with.body;
  EXPECT_EQ(with.j["tokens"], tk.encode(text, true));
  EXPECT_EQ(with.j["count"], tk.encode(text, true).size());
  EXPECT_EQ(with.j["max_model_len"], model_->config().max_position_embeddings);
  EXPECT_TRUE(with.j["token_strs"].is_null());
  const HttpReply without = post("/tokenize", json{{"model", "cats"}, {"prompt", text}, {"add_special_tokens", false},
                                                   {"return_token_strs", true}}.dump(), "");
  ASSERT_EQ(without.status, 200) << without.body;
  const auto ids = tk.encode(text, false);
  EXPECT_EQ(without.j["tokens"], ids);
  ASSERT_EQ(without.j["token_strs"].size(), ids.size());
  EXPECT_EQ(without.j["token_strs"][1], tk.id_to_token(ids[1]));
  // A conversation through the chat template: the ids a chat request's prompt has.
  const json messages = {{{"role", "user"}, {"content", "Hi"}}};
  const HttpReply chat = post("/tokenize", json{{"messages", messages}}.dump(), "");
  ASSERT_EQ(chat.status, 200) << chat.body;
  const HttpReply reply = post("/v1/chat/completions", json{{"messages", messages}, {"max_tokens", 1}, {"temperature", 0}}.dump());
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(chat.j["count"], reply.j["usage"]["prompt_tokens"]);
  EXPECT_NE(tk.decode(chat.j["tokens"].get<std::vector<int32_t>>()).find("<|im_start|>assistant"), std::string::npos);

  const HttpReply back = post("/detokenize", json{{"tokens", with.j["tokens"]}}.dump(), "");
  ASSERT_EQ(back.status, 200) << back.body;
  EXPECT_EQ(back.j["prompt"], tk.decode(with.j["tokens"].get<std::vector<int32_t>>()));
  EXPECT_NE(back.j["prompt"].get<std::string>().find(text), std::string::npos);

  const HttpReply info = get("/tokenizer_info", "");
  ASSERT_EQ(info.status, 200) << info.body;
  EXPECT_EQ(info.j["eos_token"], "<|end_of_text|>");
  EXPECT_EQ(info.j["bos_token"], "<|begin_of_text|>");
  EXPECT_NE(info.j["chat_template"].get<std::string>().find("im_start"), std::string::npos) << "--chat-template chatml";
  EXPECT_FALSE(info.j.contains("added_tokens_decoder"));

  for (const auto& [path, body, status] : std::vector<std::tuple<std::string, std::string, int>>{
           {"/tokenize", "{", 400},
           {"/tokenize", R"({"model": "base"})", 400},
           {"/tokenize", R"({"prompt": 5})", 400},
           {"/tokenize", R"({"prompt": "x", "add_special_tokens": "yes"})", 400},
           {"/tokenize", R"({"messages": [{"role": 1}]})", 400},
           {"/tokenize", R"({"model": "dogs", "prompt": "x"})", 404},
           {"/detokenize", R"({"tokens": []})", 400},
           {"/detokenize", R"({"tokens": [1, "a"]})", 400},
           {"/detokenize", R"({"tokens": [99999]})", 400},
           {"/detokenize", R"({"tokens": [-1]})", 400},
           {"/detokenize", R"({"model": "dogs", "tokens": [1]})", 404},
       }) {
    const HttpReply r = post(path, body, "");
    EXPECT_EQ(r.status, status) << path << " " << body << ": " << r.body;
    EXPECT_TRUE(r.j.is_object() && r.j.contains("error")) << r.body;
  }
}

// --adapter-dir: a request naming a folder of it loads that adapter on first use (concurrent first
// requests load it once), and answers as a server started with --adapter would; names that are no
// folder there are 404, a folder that is no adapter 400.
TEST_F(ServeHttp, AdaptersLoadOnFirstUseFromAFolder) {
  io::testing::ScratchDir folder;
  for (const char* name : {"cats", "rockets"})
    std::filesystem::copy(dir_->file(name), folder.file(name), std::filesystem::copy_options::recursive);
  std::filesystem::create_directories(folder.file("broken"));
  folder.write("broken/adapter_config.json", "{\"peft_type\": \"LORA\"}");
  serve::ServerOptions o;
  o.model_name = "base";
  o.max_batch = 4;
  o.adapter_dir = folder.path();
  serve::Server server(*model_, tok::Tokenizer::load(base_dir()), o);
  const int port = server.bind("127.0.0.1", 0);
  std::thread runner([&] { server.run(); });
  auto ask = [&](const std::string& model) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(300, 0);
    return reply_of(c.Post("/v1/completions", json{{"model", model}, {"prompt", "The"}, {"max_tokens", 8}, {"temperature", 0}}.dump(),
                           "application/json"));
  };
  std::vector<HttpReply> first(6);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < first.size(); ++i) clients.emplace_back([&, i] { first[i] = ask(i % 2 ? "cats" : "rockets"); });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < first.size(); ++i) {
    ASSERT_EQ(first[i].status, 200) << first[i].body;
    const std::string model = i % 2 ? "cats" : "rockets";
    EXPECT_EQ(first[i].j["model"], model);
    // The fixture's server has the same adapter loaded by --adapter.
    EXPECT_EQ(first[i].j["choices"][0]["text"],
              post("/v1/completions", json{{"model", model}, {"prompt", "The"}, {"max_tokens", 8}, {"temperature", 0}}.dump())
                  .j["choices"][0]["text"]);
  }
  httplib::Client c("127.0.0.1", port);
  const HttpReply models = reply_of(c.Get("/v1/models"));
  std::vector<std::string> ids;
  for (const auto& m : models.j["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"base", "cats", "rockets"}));
  for (const char* name : {"dogs", "..", ".", "../cats", "cats/", "a b"}) EXPECT_EQ(ask(name).status, 404) << name;
  const HttpReply broken = ask("broken");
  EXPECT_EQ(broken.status, 400) << broken.body;
  EXPECT_NE(broken.body.find("broken"), std::string::npos) << broken.body;
  server.shutdown();
  runner.join();

  // --max-loaded-adapters 1: loading another unloads the least recently used.
  o.max_loaded_adapters = 1;
  serve::Server bounded(*model_, tok::Tokenizer::load(base_dir()), o);
  const int bounded_port = bounded.bind("127.0.0.1", 0);
  std::thread bounded_runner([&] { bounded.run(); });
  auto loaded = [&] {
    httplib::Client bc("127.0.0.1", bounded_port);
    const HttpReply models = reply_of(bc.Get("/v1/models"));  // named: a temporary's member would dangle in the loop
    std::vector<std::string> names;
    for (const auto& m : models.j["data"]) names.push_back(m["id"]);
    return names;
  };
  auto bounded_ask = [&](const std::string& model) {
    httplib::Client bc("127.0.0.1", bounded_port);
    return reply_of(bc.Post("/v1/completions", json{{"model", model}, {"prompt", "The"}, {"max_tokens", 2}}.dump(),
                            "application/json")).status;
  };
  EXPECT_EQ(bounded_ask("cats"), 200);
  EXPECT_EQ(loaded(), (std::vector<std::string>{"base", "cats"}));
  EXPECT_EQ(bounded_ask("rockets"), 200);
  EXPECT_EQ(loaded(), (std::vector<std::string>{"base", "rockets"}));
  EXPECT_EQ(bounded_ask("cats"), 200);  // loaded again
  EXPECT_EQ(loaded(), (std::vector<std::string>{"base", "cats"}));
  {
    httplib::Client bc("127.0.0.1", bounded_port);
    const std::string text = reply_of(bc.Get("/metrics")).body;
    EXPECT_NE(text.find("\nlowrank_adapter_folder_loads_total 3\n"), std::string::npos) << text;
    EXPECT_NE(text.find("\nlowrank_adapter_folder_evictions_total 2\n"), std::string::npos) << text;
  }
  bounded.shutdown();
  bounded_runner.join();
}

// The HTTP pool holds a thread per waiting request, and --max-batch allows 4,096: the pool is
// capped, or 8,208 threads could exhaust the machine's process limit.
TEST(ServeThreads, TheHttpPoolIsCappedAtTheLargestBatch) {
  auto count_threads = [] {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
  };
  const size_t before = count_threads();
  model::Model model = model::Model::load(base_dir());
  serve::ServerOptions o;
  o.model_name = "base";
  o.max_batch = 4096;
  serve::Server server(model, tok::Tokenizer::load(base_dir()), o);
  const int port = server.bind("127.0.0.1", 0);
  std::thread runner([&] { server.run(); });
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60);  // starting ~1,000 threads on a loaded machine can take seconds
  auto health = c.Get("/health");  // answered once the pool exists
  const size_t during = count_threads();
  server.shutdown();
  runner.join();
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_GT(during, before + 32);
  EXPECT_LE(during, before + 1024 + 16);
}

}  // namespace
