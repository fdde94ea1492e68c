#pragma once
// The OpenAI API's wire format as vLLM serves it: request bodies of /v1/completions and
// /v1/chat/completions checked and parsed (every problem an ApiError naming the field), and the
// reply objects, whole or as server-sent-event chunks.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "lowrank/infer/sampler.h"

namespace lowrank::serve {

// A request the server refuses: the HTTP status and the message of the error body.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// Replies keep OpenAI's key order (id, object, created, model, choices, usage).
using ReplyJson = nlohmann::ordered_json;

// {"error": {"message", "type", "param": null, "code": status}}; the type follows OpenAI's names.
ReplyJson error_body(int status, const std::string& message);

// Parses a request body: not JSON, not an object, or nested deeper than 64 levels -> ApiError 400.
nlohmann::json parse_body(const std::string& body);

// The parameters both endpoints share.
struct GenerationParams {
  std::string model;                   // "" when absent: the base model
  std::optional<int64_t> max_tokens;   // absent: 16 for completions, the rest of the context for chat
  infer::SamplingOptions sampling;     // temperature 0 -> greedy; seed drawn by the server if absent
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage: a last chunk with the usage
};

struct CompletionRequest {
  GenerationParams params;
  std::variant<std::string, std::vector<int32_t>> prompt;  // text, or token ids as they are
};

struct ChatRequest {
  GenerationParams params;
  nlohmann::json messages;  // [{"role", "content": string}, ...]: text parts already joined
};

CompletionRequest parse_completion_request(const nlohmann::json& body);
ChatRequest parse_chat_request(const nlohmann::json& body);

// What every reply object of one request repeats.
struct ReplyHeader {
  std::string id;   // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  bool chat = false;
};
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// "stop" or "length".
ReplyJson full_reply(const ReplyHeader& h, const std::string& text, const std::string& finish_reason,
                          const Usage& usage);
// One streamed piece of text; `finish_reason` "" while the reply goes on. Chat chunks carry
// {"delta": {"content"}}; the first chat chunk should be role_chunk().
ReplyJson text_chunk(const ReplyHeader& h, const std::string& delta, const std::string& finish_reason);
ReplyJson role_chunk(const ReplyHeader& h);
ReplyJson usage_chunk(const ReplyHeader& h, const Usage& usage);

}  // namespace lowrank::serve
