#pragma once
// The OpenAI API's wire format as vLLM serves it: request bodies of /v1/completions and
// /v1/chat/completions checked and parsed (every problem an ApiError naming the field), and the
// reply objects, whole or as server-sent-event chunks.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
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
  infer::SamplingOptions sampling;     // temperature 0 -> greedy; seed drawn by the server if absent;
                                       // min_p, presence/frequency_penalty, logit_bias, min_tokens
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage: a last chunk with the usage
  bool continuous_usage = false;       // vLLM's stream_options.continuous_usage_stats (with include_usage):
                                       // every chunk carries the usage so far
  // Completions' `logprobs: N`, chat's `logprobs: true` with `top_logprobs: N`: each reply token's
  // log-probability and its N most likely alternatives (0 <= N <= infer::kMaxTopLogprobs); -1: none.
  int top_logprobs = -1;
  // Completions only: the prompt before the reply, with its tokens' log-probabilities when
  // top_logprobs >= 0 (the first token's null). With max_tokens 0 the reply is the prompt alone.
  bool echo = false;
  int64_t n = 1;                         // choices per prompt (1 to kMaxChoicesPerPrompt)
  std::vector<int32_t> stop_token_ids;   // vLLM's: more ids that end a choice (finish "stop")
  bool ignore_eos = false;               // vLLM's: the model's eos ids do not end a choice
};

// A prompt as text, or as token ids used as they are.
using Prompt = std::variant<std::string, std::vector<int32_t>>;

struct CompletionRequest {
  GenerationParams params;
  std::vector<Prompt> prompts;  // one choice each (`prompt` may be a list), at most kMaxPrompts
};

// Prompts one completion request may list, and choices (`n`) per prompt; prompts × n is at most
// kMaxPrompts too.
inline constexpr size_t kMaxPrompts = 1024;
inline constexpr int64_t kMaxChoicesPerPrompt = 64;

struct ChatRequest {
  GenerationParams params;
  nlohmann::json messages;  // [{"role", "content": string}, ...]: text parts already joined
};

CompletionRequest parse_completion_request(const nlohmann::json& body);
ChatRequest parse_chat_request(const nlohmann::json& body);

// vLLM's POST /tokenize: {"prompt", "add_special_tokens" (default true)}, or a conversation
// {"messages", "add_generation_prompt" (default true), "add_special_tokens" (default false)}.
struct TokenizeRequest {
  std::string model;                   // "" when absent: the base model
  std::optional<std::string> prompt;   // the text form; else `messages`
  nlohmann::json messages;             // as ChatRequest's
  bool add_special_tokens = true;
  bool add_generation_prompt = true;
  bool return_token_strs = false;      // also each id's vocabulary string
};
TokenizeRequest parse_tokenize_request(const nlohmann::json& body);

// vLLM's POST /detokenize: {"tokens": [ids]}.
struct DetokenizeRequest {
  std::string model;
  std::vector<int32_t> tokens;
};
DetokenizeRequest parse_detokenize_request(const nlohmann::json& body);

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

// One token of a reply (or of an echoed prompt) with its log-probabilities, as the wire shows it.
struct LoggedToken {
  std::string text;                                    // the token decoded alone
  std::optional<float> logprob;                        // null: a prompt's first token
  std::vector<std::pair<std::string, float>> top;      // alternatives, most likely first
};

// A choice's `logprobs`: completions' {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
// (offsets counted in characters of the tokens' texts from `first_offset`; each top_logprobs
// entry a {text: logprob} object holding the token itself and its alternatives), or chat's
// {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}. -inf shows as -9999 (vLLM).
// `end_offset`, when given, gets the offset after the last token (where the next piece starts).
ReplyJson logprobs_json(bool chat, const std::vector<LoggedToken>& tokens, int64_t first_offset,
                        int64_t* end_offset = nullptr);

// One choice of a reply: its text so far (or a streamed piece), why it ended ("" while it goes
// on; "stop" or "length"), and its `logprobs` (null when not asked for).
struct ChoiceReply {
  int64_t index = 0;
  std::string text;
  std::string finish_reason;
  ReplyJson logprobs = nullptr;
};

ReplyJson full_reply(const ReplyHeader& h, const std::vector<ChoiceReply>& choices, const Usage& usage);
// One streamed piece of a choice. Chat chunks carry {"delta": {"content"}}; the first chat chunk
// should be role_chunk().
ReplyJson text_chunk(const ReplyHeader& h, const ChoiceReply& piece);
ReplyJson role_chunk(const ReplyHeader& h, int64_t index = 0);  // chat: the first chunk of choice `index`
ReplyJson usage_chunk(const ReplyHeader& h, const Usage& usage);
// {prompt_tokens, completion_tokens, total_tokens}.
ReplyJson usage_json(const Usage& u);

}  // namespace lowrank::serve
