// Parsing OpenAI request bodies: what is accepted, and every malformed field as a 400 that names it.
#include <gtest/gtest.h>

#include <limits>
#include <map>

#include "lowrank/serve/openai_protocol.h"

using namespace lowrank::serve;
using json = nlohmann::json;

namespace {

int status_of(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const ApiError& e) {
    if (message) *message = e.what();
    return e.status();
  }
  return 200;
}

TEST(OpenAiProtocol, CompletionParameters) {
  auto r = parse_completion_request(json::parse(R"({"model": "a", "prompt": "hi", "max_tokens": 5, "temperature": 0,
      "top_p": 0.5, "top_k": -1, "seed": 7, "stop": ["x", ""], "stream": true, "stream_options": {"include_usage": true}})"));
  EXPECT_EQ(r.params.model, "a");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(std::get<std::string>(r.prompts[0]), "hi");
  EXPECT_EQ(r.params.top_logprobs, -1);
  EXPECT_FALSE(r.params.echo);
  EXPECT_EQ(r.params.max_tokens, 5);
  EXPECT_TRUE(r.params.sampling.greedy);
  EXPECT_EQ(r.params.sampling.top_p, 0.5);
  EXPECT_EQ(r.params.sampling.top_k, 0);
  EXPECT_TRUE(r.params.seed_given);
  EXPECT_EQ(r.params.sampling.seed, 7u);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"x", ""}));
  EXPECT_TRUE(r.params.stream && r.params.include_usage);
  auto ids = parse_completion_request(json::parse(R"({"prompt": [0, 5, 9], "temperature": 0.7})"));
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_EQ(std::get<std::vector<int32_t>>(ids.prompts[0]), (std::vector<int32_t>{0, 5, 9}));
  EXPECT_FALSE(ids.params.sampling.greedy);
  EXPECT_EQ(ids.params.sampling.temperature, 0.7);
  EXPECT_FALSE(ids.params.max_tokens);
}

// What lm-evaluation-harness's local-completions sends to score a continuation: a list of
// token-id prompts, echo, logprobs 1, max_tokens 1 (0: score only).
TEST(OpenAiProtocol, PromptListsEchoAndLogprobs) {
  auto r = parse_completion_request(json::parse(R"({"prompt": [[1, 2, 3], [4]], "echo": true, "logprobs": 1,
      "max_tokens": 1, "temperature": 0})"));
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(std::get<std::vector<int32_t>>(r.prompts[1]), (std::vector<int32_t>{4}));
  EXPECT_TRUE(r.params.echo);
  EXPECT_EQ(r.params.top_logprobs, 1);
  auto texts = parse_completion_request(json::parse(R"({"prompt": ["a", "b", "c"], "logprobs": 0, "echo": true, "max_tokens": 0})"));
  ASSERT_EQ(texts.prompts.size(), 3u);
  EXPECT_EQ(std::get<std::string>(texts.prompts[2]), "c");
  EXPECT_EQ(texts.params.top_logprobs, 0);
  EXPECT_EQ(texts.params.max_tokens, 0);
  auto chat = parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 5})"));
  EXPECT_EQ(chat.params.top_logprobs, 5);
  EXPECT_EQ(parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})")).params.top_logprobs, 0);
  EXPECT_EQ(parse_chat_request(json::parse(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false})")).params.top_logprobs, -1);
}

TEST(OpenAiProtocol, VllmSamplingParameters) {
  auto r = parse_completion_request(json::parse(R"({"prompt": "x", "n": 3, "min_p": 0.1, "presence_penalty": -0.5,
      "frequency_penalty": 1.5, "logit_bias": {"7": -100, "12": 2.5}, "min_tokens": 4, "stop_token_ids": [3, 9],
      "ignore_eos": true})"));
  EXPECT_EQ(r.params.n, 3);
  EXPECT_EQ(r.params.sampling.min_p, 0.1);
  EXPECT_EQ(r.params.sampling.presence_penalty, -0.5);
  EXPECT_EQ(r.params.sampling.frequency_penalty, 1.5);
  EXPECT_EQ(r.params.sampling.logit_bias, (std::map<int32_t, float>{{7, -100.0f}, {12, 2.5f}}));
  EXPECT_EQ(r.params.sampling.min_tokens, 4);
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<int32_t>{3, 9}));
  EXPECT_TRUE(r.params.ignore_eos);
}

TEST(OpenAiProtocol, ChatMessagesAndTextParts) {
  auto r = parse_chat_request(json::parse(R"({"messages": [{"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
      "max_completion_tokens": 3})"));
  EXPECT_EQ(r.messages[1]["content"], "a\nb");
  EXPECT_EQ(r.params.max_tokens, 3);
}

TEST(OpenAiProtocol, MalformedBodiesAre400NamingTheField) {
  const std::vector<std::pair<std::string, std::string>> completions = {
      {"", "not valid JSON"},
      {"[1, 2]", "JSON object"},
      {R"({"model": "m"})", "'prompt' is required"},
      {R"({"prompt": 5})", "'prompt'"},
      {R"({"prompt": []})", "'prompt'"},
      {R"({"prompt": [1, "a"]})", "'prompt'"},
      {R"({"prompt": [-1]})", "'prompt'"},
      {R"({"prompt": "x", "max_tokens": "ten"})", "'max_tokens'"},
      {R"({"prompt": "x", "max_tokens": 0})", "'max_tokens'"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "'max_tokens'"},
      {R"({"prompt": "x", "temperature": "hot"})", "'temperature'"},
      {R"({"prompt": "x", "temperature": -1})", "'temperature'"},
      {R"({"prompt": "x", "top_p": 0})", "'top_p'"},
      {R"({"prompt": "x", "top_k": -5})", "'top_k'"},
      {R"({"prompt": "x", "seed": "s"})", "'seed'"},
      {R"({"prompt": "x", "stop": 3})", "'stop'"},
      {R"({"prompt": "x", "stop": [3]})", "'stop'"},
      {R"({"prompt": "x", "stream": "yes"})", "'stream'"},
      {R"({"prompt": "x", "model": 3})", "'model'"},
      {R"({"prompt": "x", "n": 65})", "'n'"},
      {R"({"prompt": "x", "logprobs": 21})", "'logprobs'"},
      {R"({"prompt": "x", "logprobs": -1})", "'logprobs'"},
      {R"({"prompt": "x", "logprobs": true})", "'logprobs'"},
      {R"({"prompt": "x", "logprobs": "1"})", "'logprobs'"},
      {R"({"prompt": "x", "echo": "yes"})", "'echo'"},
      {R"({"prompt": "x", "echo": true, "max_tokens": -1})", "'max_tokens'"},
      {R"({"prompt": "x", "prompt_logprobs": 1})", "'prompt_logprobs'"},
      {R"({"prompt": [[1], "a"]})", "'prompt'"},
      {R"({"prompt": ["a", [1]]})", "'prompt'"},
      {R"({"prompt": [[]]})", "'prompt'"},
      {R"({"prompt": [[1, "a"]]})", "'prompt'"},
      {R"({"prompt": [["a"]]})", "'prompt'"},
      {R"({"prompt": [[-4]]})", "'prompt'"},
      {R"({"prompt": [1, [2]]})", "'prompt'"},
      {json{{"prompt", std::vector<std::string>(kMaxPrompts + 1, "a")}}.dump(), "'prompt'"},
      {R"({"prompt": "x", "presence_penalty": 2.5})", "'presence_penalty'"},
      {R"({"prompt": "x", "logit_bias": {"a": 1}})", "'logit_bias'"},
      {R"({"prompt": "x", "logit_bias": {"1": "x"}})", "'logit_bias'"},
      {R"({"prompt": "x", "logit_bias": {"-1": 1}})", "'logit_bias'"},
      {R"({"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]})", "'tools'"},
      {R"({"prompt": "x", "tool_choice": "required"})", "'tool_choice'"},
      {R"({"prompt": "x", "response_format": {"type": "json_object"}})", "'response_format'"},
      {R"({"prompt": "x", "response_format": "json"})", "'response_format'"},
      {R"({"prompt": "x", "response_format": {"type": 5}})", "'response_format'"},
      {R"({"prompt": "x", "top_logprobs": 3})", "'top_logprobs'"},
      {R"({"prompt": "x", "guided_json": {"type": "object"}})", "'guided_json'"},
      {R"({"prompt": "x", "stop_token_ids": ["a"]})", "'stop_token_ids'"},
      {json{{"prompt", "x"}, {"stop_token_ids", std::vector<int>(1025, 3)}}.dump(), "'stop_token_ids'"},
      {json{{"prompt", "x"}, {"logit_bias", [] {
              json b;
              for (int i = 0; i < 1025; ++i) b[std::to_string(i)] = 1;
              return b;
            }()}}.dump(), "'logit_bias'"},
      {R"({"prompt": "x", "ignore_eos": 1})", "'ignore_eos'"},
      {R"({"prompt": "x", "min_p": 1.1})", "'min_p'"},
      {R"({"prompt": "x", "min_tokens": -4})", "'min_tokens'"},
      {std::string(100, '[') + std::string(100, ']'), "nested too deeply"},
  };
  for (const auto& c : completions) {
    const std::string& body = c.first;  // named, not a structured binding: clang 14 cannot capture those
    const std::string& want = c.second;
    std::string message;
    EXPECT_EQ(status_of([&] { parse_completion_request(parse_body(body)); }, &message), 400) << body;
    EXPECT_NE(message.find(want), std::string::npos) << body << " -> " << message;
  }
  const std::vector<std::string> chats = {
      R"({"model": "m"})", R"({"messages": "hi"})", R"({"messages": []})", R"({"messages": [5]})",
      R"({"messages": [{"content": "x"}]})", R"({"messages": [{"role": "user", "content": 5}]})",
      R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
  };
  for (const auto& body : chats) EXPECT_EQ(status_of([&] { parse_chat_request(parse_body(body)); }), 400) << body;
  const std::vector<std::pair<std::string, std::string>> chat_logprobs = {
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "'top_logprobs' needs 'logprobs'"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "'top_logprobs'"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 3})", "'logprobs'"},
      {R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", "'echo'"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "'max_tokens'"},
  };
  for (const auto& c : chat_logprobs) {
    std::string message;
    EXPECT_EQ(status_of([&] { parse_chat_request(parse_body(c.first)); }, &message), 400) << c.first;
    EXPECT_NE(message.find(c.second), std::string::npos) << c.first << " -> " << message;
  }
}

// Defaults and no-op values of the options above are accepted, as OpenAI's clients send them.
TEST(OpenAiProtocol, NoOpValuesOfUnsupportedOptionsAreAccepted) {
  for (const char* body : {R"({"prompt": "x", "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
                              "top_logprobs": 0, "stop_token_ids": [], "ignore_eos": false, "min_p": 0, "min_tokens": 0})",
                           R"({"prompt": "x", "tools": null, "tool_choice": "auto", "logprobs": false})"})
    EXPECT_EQ(status_of([&] { parse_completion_request(parse_body(body)); }), 200) << body;
}

// A temperature so small that 1 / temperature overflows f32 made every probability NaN and the
// sampler picked the last candidate: it is the argmax (vLLM: below 1e-5, greedy).
TEST(OpenAiProtocol, TinyTemperaturesAreGreedy) {
  for (const char* t : {"1e-300", "1e-40", "9e-6"}) {
    auto r = parse_completion_request(json::parse(std::string(R"({"prompt": "x", "temperature": )") + t + "}"));
    EXPECT_TRUE(r.params.sampling.greedy) << t;
  }
  auto r = parse_completion_request(json::parse(R"({"prompt": "x", "temperature": 1e-4})"));
  EXPECT_FALSE(r.params.sampling.greedy);
  EXPECT_EQ(r.params.sampling.temperature, 1e-4);
}

// Values accepted before that overflowed the logits (a repetition penalty of 1e-300 divides them
// by 0 in f32) or made a request take hours (a million stop strings searched after every token).
TEST(OpenAiProtocol, ParametersThatOverflowOrStallAreRefused) {
  std::vector<std::pair<json, std::string>> bodies = {
      {{{"prompt", "x"}, {"repetition_penalty", 1e-300}}, "'repetition_penalty'"},
      {{{"prompt", "x"}, {"repetition_penalty", 1e-4}}, "'repetition_penalty'"},
      {{{"prompt", "x"}, {"repetition_penalty", 1e300}}, "'repetition_penalty'"},
      {{{"prompt", "x"}, {"stop", std::vector<std::string>(65, "x")}}, "'stop'"},
      {{{"prompt", "x"}, {"stop", std::string(1025, 'a')}}, "'stop'"},
      {{{"prompt", "x"}, {"stop", {"a", std::string(1025, 'a')}}}, "'stop'"},
  };
  for (const auto& c : bodies) {
    const json& body = c.first;  // named, not a structured binding: clang 14 cannot capture those
    std::string message;
    EXPECT_EQ(status_of([&] { parse_completion_request(body); }, &message), 400) << body.dump().substr(0, 200);
    EXPECT_NE(message.find(c.second), std::string::npos) << message;
  }
  auto edge = parse_completion_request(
      json{{"prompt", "x"}, {"repetition_penalty", 1e-3}, {"stop", std::vector<std::string>(64, std::string(1024, 'a'))}});
  EXPECT_EQ(edge.params.stop.size(), 64u);
  EXPECT_EQ(edge.params.sampling.repetition_penalty, 1e-3);
}

TEST(OpenAiProtocol, ErrorBodyAndReplies) {
  auto e = error_body(404, "no such model");
  EXPECT_EQ(e["error"]["message"], "no such model");
  EXPECT_EQ(e["error"]["type"], "not_found_error");
  EXPECT_EQ(e["error"]["code"], 404);
  ReplyHeader h{"cmpl-1", 5, "base", false};
  auto full = full_reply(h, {{0, "text", "length"}, {1, "more", "stop"}}, {3, 4});
  EXPECT_EQ(full["object"], "text_completion");
  EXPECT_EQ(full["choices"][0]["text"], "text");
  EXPECT_EQ(full["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(full["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(full["choices"][1]["index"], 1);
  EXPECT_EQ(full["choices"][1]["text"], "more");
  EXPECT_EQ(full["usage"]["total_tokens"], 7);
  h.chat = true;
  EXPECT_EQ(full_reply(h, {{0, "t", "stop"}}, {1, 1})["choices"][0]["message"]["content"], "t");
  auto chunk = text_chunk(h, {0, "de", ""});
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_EQ(chunk["choices"][0]["delta"]["content"], "de");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(role_chunk(h)["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(usage_chunk(h, {2, 3})["usage"]["completion_tokens"], 3);
}

// The two shapes of `logprobs`: completions' parallel lists (the prompt's first token null, each
// top_logprobs object holding the token itself first), chat's list of objects with UTF-8 bytes.
TEST(OpenAiProtocol, LogprobsShapes) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<LoggedToken> tokens = {
      {"The", std::nullopt, {}},
      {" é", -0.5f, {{" a", -0.25f}, {" é", -0.5f}}},
      {"!", -inf, {{"?", -1.0f}}},
  };
  int64_t end = 0;
  const ReplyJson c = logprobs_json(false, tokens, 10, &end);
  EXPECT_EQ(c["tokens"], ReplyJson({"The", " é", "!"}));
  EXPECT_EQ(c["text_offset"], ReplyJson({10, 13, 15}));  // characters, not bytes: " é" is 2
  EXPECT_EQ(end, 16);
  EXPECT_TRUE(c["token_logprobs"][0].is_null());
  EXPECT_EQ(c["token_logprobs"][1], -0.5f);
  EXPECT_EQ(c["token_logprobs"][2], -9999.0f);  // -inf is not JSON
  EXPECT_TRUE(c["top_logprobs"][0].is_null());
  EXPECT_EQ(c["top_logprobs"][1].dump(), R"({" é":-0.5," a":-0.25})");
  EXPECT_EQ(c["top_logprobs"][2].dump(), R"({"!":-9999.0,"?":-1.0})");
  const ReplyJson chat = logprobs_json(true, {tokens[1]}, 0);
  ASSERT_EQ(chat["content"].size(), 1u);
  EXPECT_EQ(chat["content"][0]["token"], " é");
  EXPECT_EQ(chat["content"][0]["bytes"], ReplyJson({32, 0xC3, 0xA9}));
  EXPECT_EQ(chat["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(chat["content"][0]["top_logprobs"][0]["token"], " a");
  EXPECT_EQ(chat["content"][0]["top_logprobs"][0]["logprob"], -0.25f);
}

}  // namespace
