#include "lowrank/serve/openai_protocol.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>

#include "lowrank/infer/token_logprobs.h"

namespace lowrank::serve {
namespace {

using json = nlohmann::json;

constexpr int kMaxDepth = 64;  // deeper bodies are refused before they are built
// Temperatures below infer::kMinTemperature sample the argmax (as vLLM's _SAMPLING_EPS); the
// repetition penalty must lie within infer's limits (sampler.h says why).
using infer::kMinRepetitionPenalty, infer::kMaxRepetitionPenalty;
// Every stop string is searched for in the whole reply after every token: a body of 8 MiB holds
// a million of them, hours of work for a reply of a few hundred tokens.
constexpr size_t kMaxStopStrings = 64, kMaxStopBytes = 1024;
constexpr size_t kMaxLogitBias = 1024;  // entries of logit_bias (OpenAI's limit is 300)
constexpr size_t kMaxStopTokenIds = 1024;

[[noreturn]] void bad(const std::string& message) { throw ApiError(400, message); }

const char* error_type(int status) {
  switch (status) {
    case 400: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "internal_server_error" : "invalid_request_error";
  }
}

std::optional<double> number(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) bad(std::string("'") + key + "' must be a number");
  const double v = it->get<double>();
  if (!std::isfinite(v)) bad(std::string("'") + key + "' must be finite");
  return v;
}

std::optional<int64_t> integer(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (it->is_number_unsigned()) {
    if (it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      bad(std::string("'") + key + "' is too large");
    return static_cast<int64_t>(it->get<uint64_t>());
  }
  if (!it->is_number_integer()) bad(std::string("'") + key + "' must be an integer");
  return it->get<int64_t>();
}

bool boolean(const json& body, const char* key, bool fallback) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) bad(std::string("'") + key + "' must be true or false");
  return it->get<bool>();
}

// A JSON list of token ids; `shape` is the message for anything else (an empty list too).
std::vector<int32_t> token_ids(const json& list, const char* field, const char* shape) {
  if (!list.is_array() || list.empty()) bad(shape);
  std::vector<int32_t> ids;
  for (const auto& v : list) {
    if (!v.is_number_integer()) bad(shape);
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      bad(std::string("'") + field + "' holds token id " + std::to_string(id) + ", outside the vocabulary");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// Features of the API this server does not implement: refused rather than silently ignored.
void refuse_unsupported(const json& body, bool chat) {
  auto set = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  if (auto n = integer(body, "best_of"); n && *n != 1) bad("'best_of' is not supported");
  if (chat && boolean(body, "echo", false)) bad("'echo' is not supported by chat completions");
  if (set("prompt_logprobs")) bad("'prompt_logprobs' is not supported (completions: 'echo' with 'logprobs')");
  if (set("suffix")) bad("'suffix' is not supported");
  // Requests that ask for a different output than plain sampled text: ignoring them would answer
  // another question than the one asked (a tool call, JSON of a schema, token log-probabilities,
  // vLLM's constrained decoding, its stop and eos controls).
  auto nonempty = [&](const char* key) { return set(key) && !body[key].empty(); };
  if (nonempty("tools") || nonempty("functions")) bad("'tools' (function calling) is not supported");
  if (set("tool_choice") && body["tool_choice"] != "none" && body["tool_choice"] != "auto")
    bad("'tool_choice' is not supported");
  if (set("response_format") && !(body["response_format"].is_object() && body["response_format"].contains("type") &&
                                   body["response_format"]["type"] == "text"))
    bad("'response_format' other than {\"type\": \"text\"} is not supported");
  if (auto n = integer(body, "top_logprobs"); !chat && n && *n != 0)
    bad("'top_logprobs' is a chat completions parameter (completions take 'logprobs': N)");
  for (const char* key : {"guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs"})
    if (set(key)) bad(std::string("'") + key + "' (constrained decoding) is not supported");
}

// A number of `body` within [lo, hi], or `fallback` when absent.
double number_in(const json& body, const char* key, double lo, double hi, double fallback) {
  const double v = number(body, key).value_or(fallback);
  if (!(v >= lo && v <= hi))
    bad(std::string("'") + key + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + json(v).dump());
  return v;
}

// OpenAI's logit_bias: {"token id": bias in [-100, 100]}.
std::map<int32_t, float> parse_logit_bias(const json& body) {
  std::map<int32_t, float> out;
  auto it = body.find("logit_bias");
  if (it == body.end() || it->is_null()) return out;
  if (!it->is_object()) bad("'logit_bias' must be an object of {\"token id\": bias}");
  if (it->size() > kMaxLogitBias)
    bad("'logit_bias' holds " + std::to_string(it->size()) + " entries, more than " + std::to_string(kMaxLogitBias));
  for (const auto& [key, value] : it->items()) {
    int64_t id = -1;
    const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
    if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id > std::numeric_limits<int32_t>::max())
      bad("'logit_bias' keys must be token ids, got \"" + key + "\"");
    if (!value.is_number() || !(value.get<double>() >= -100 && value.get<double>() <= 100))
      bad("'logit_bias' values must be numbers in [-100, 100], got " + value.dump() + " for " + key);
    out[static_cast<int32_t>(id)] = value.get<float>();
  }
  return out;
}

std::string model_name(const json& body) {
  auto it = body.find("model");
  if (it == body.end() || it->is_null()) return {};
  if (!it->is_string()) bad("'model' must be a string");
  return it->get<std::string>();
}

// How many alternatives a logprobs count asks for: 0 <= N <= kMaxTopLogprobs.
int top_count(const json& body, const char* key) {
  const int64_t n = integer(body, key).value_or(0);
  if (n < 0 || n > infer::kMaxTopLogprobs)
    bad(std::string("'") + key + "' must be from 0 to " + std::to_string(infer::kMaxTopLogprobs) + ", got " + std::to_string(n));
  return static_cast<int>(n);
}

// Completions: `logprobs` null/false or N. Chat: `logprobs` true/false, `top_logprobs` N with it.
int parse_top_logprobs(const json& body, bool chat) {
  auto it = body.find("logprobs");
  const bool absent = it == body.end() || it->is_null() || *it == false;
  if (chat) {
    const bool on = boolean(body, "logprobs", false);
    const int n = top_count(body, "top_logprobs");
    if (!on && n > 0) bad("'top_logprobs' needs 'logprobs': true");
    return on ? n : -1;
  }
  if (absent) return -1;
  if (!it->is_number_integer()) bad("'logprobs' must be an integer (the number of alternatives to return) or null");
  return top_count(body, "logprobs");
}

GenerationParams parse_params(const json& body, bool chat) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  refuse_unsupported(body, chat);
  GenerationParams p;
  p.model = model_name(body);
  p.echo = !chat && boolean(body, "echo", false);
  p.top_logprobs = parse_top_logprobs(body, chat);
  if (chat) p.max_tokens = integer(body, "max_completion_tokens");
  if (!p.max_tokens) p.max_tokens = integer(body, "max_tokens");
  // max_tokens 0 with echo scores the prompt and generates nothing (vLLM's echo without generation).
  if (p.max_tokens && *p.max_tokens < (p.echo ? 0 : 1))
    bad(p.echo ? "'max_tokens' must not be negative" : "'max_tokens' must be at least 1 (0 only with 'echo')");
  auto& s = p.sampling;
  if (auto t = number(body, "temperature")) {
    if (*t < 0) bad("'temperature' must not be negative");
    if (*t < infer::kMinTemperature) s.greedy = true;
    else s.temperature = *t;
  }
  if (auto v = number(body, "top_p")) {
    if (!(*v > 0 && *v <= 1)) bad("'top_p' must be in (0, 1]");
    s.top_p = *v;
  }
  if (auto k = integer(body, "top_k")) {
    if (*k < -1) bad("'top_k' must be -1 or 0 (off) or positive");
    s.top_k = *k < 0 ? 0 : *k;
  }
  if (auto v = number(body, "repetition_penalty")) {
    if (!(*v >= kMinRepetitionPenalty && *v <= kMaxRepetitionPenalty))
      bad("'repetition_penalty' must be in [0.001, 1000] (1: off)");
    s.repetition_penalty = *v;
  }
  s.min_p = number_in(body, "min_p", 0, 1, 0);
  s.presence_penalty = number_in(body, "presence_penalty", -2, 2, 0);
  s.frequency_penalty = number_in(body, "frequency_penalty", -2, 2, 0);
  s.logit_bias = parse_logit_bias(body);
  s.min_tokens = integer(body, "min_tokens").value_or(0);
  if (s.min_tokens < 0) bad("'min_tokens' must not be negative");
  p.ignore_eos = boolean(body, "ignore_eos", false);
  if (auto it = body.find("stop_token_ids"); it != body.end() && !it->is_null() && !it->empty()) {
    // Every generated token is looked up among them: a body's million ids would slow every step.
    if (it->is_array() && it->size() > kMaxStopTokenIds)
      bad("'stop_token_ids' holds " + std::to_string(it->size()) + " ids, more than " + std::to_string(kMaxStopTokenIds));
    p.stop_token_ids = token_ids(*it, "stop_token_ids", "'stop_token_ids' must be a list of token ids");
  }
  p.n = integer(body, "n").value_or(1);
  if (p.n < 1 || p.n > kMaxChoicesPerPrompt)
    bad("'n' must be from 1 to " + std::to_string(kMaxChoicesPerPrompt) + ", got " + std::to_string(p.n));
  if (auto seed = integer(body, "seed")) {
    s.seed = static_cast<uint64_t>(*seed);
    p.seed_given = true;
  }
  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      p.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const auto& s : *it) {
        if (!s.is_string()) bad("'stop' must be a string or a list of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      bad("'stop' must be a string or a list of strings");
    }
    if (p.stop.size() > kMaxStopStrings)
      bad("'stop' holds " + std::to_string(p.stop.size()) + " strings, more than " + std::to_string(kMaxStopStrings));
    for (const auto& stop : p.stop)
      if (stop.size() > kMaxStopBytes)
        bad("'stop' holds a string of " + std::to_string(stop.size()) + " bytes, more than " +
            std::to_string(kMaxStopBytes));
  }
  p.stream = boolean(body, "stream", false);
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) bad("'stream_options' must be an object");
    p.include_usage = boolean(*it, "include_usage", false);
    p.continuous_usage = boolean(*it, "continuous_usage_stats", false) && p.include_usage;  // vLLM's rule
  }
  return p;
}

ReplyJson object_base(const ReplyHeader& h, bool chunk) {
  return {{"id", h.id},
          {"object", h.chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", h.created},
          {"model", h.model}};
}

ReplyJson finish_json(const std::string& finish_reason) {
  return finish_reason.empty() ? ReplyJson(nullptr) : ReplyJson(finish_reason);
}

}  // namespace

ReplyJson usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

ReplyJson error_body(int status, const std::string& message) {
  return {{"error", {{"message", message}, {"type", error_type(status)}, {"param", nullptr}, {"code", status}}}};
}

json parse_body(const std::string& body) {
  try {
    json j = json::parse(body, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) throw ApiError(400, "the request body is nested too deeply");
      return true;
    });
    if (!j.is_object()) bad("the request body must be a JSON object");
    return j;
  } catch (const json::exception& e) {
    bad(std::string("the request body is not valid JSON: ") + e.what());
  }
}

namespace {

constexpr const char* kPromptShape =
    "'prompt' must be a string, a list of token ids, or a non-empty list of strings or of lists of token ids";

// `messages`: [{"role", "content": string or text parts}], the parts joined as vLLM joins them.
json parse_messages(const json& body) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) bad("'messages' is required");
  if (!it->is_array() || it->empty()) bad("'messages' must be a non-empty list of {\"role\", \"content\"}");
  json messages = json::array();
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(where + " must be an object with \"role\" and \"content\"");
    if (!m.contains("role") || !m["role"].is_string()) bad(where + ".role must be a string");
    std::string content;
    const json c = m.value("content", json(nullptr));
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {
      for (const auto& part : c) {
        if (!part.is_object() || part.value("type", json(nullptr)) != "text" || !part.contains("text") ||
            !part["text"].is_string())
          bad(where + ".content parts must be {\"type\": \"text\", \"text\": string}");
        content += (content.empty() ? "" : "\n") + part["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      bad(where + ".content must be a string or a list of text parts");
    }
    messages.push_back({{"role", m["role"]}, {"content", content}});
  }
  return messages;
}

}  // namespace

CompletionRequest parse_completion_request(const json& body) {
  CompletionRequest r;
  r.params = parse_params(body, false);
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) bad("'prompt' is required");
  if (it->is_string()) {
    r.prompts.emplace_back(it->get<std::string>());
    return r;
  }
  if (!it->is_array() || it->empty()) bad(kPromptShape);
  if (!it->front().is_string() && !it->front().is_array()) {  // one prompt of token ids
    r.prompts.emplace_back(token_ids(*it, "prompt", kPromptShape));
    return r;
  }
  if (it->size() > kMaxPrompts)
    bad("'prompt' lists " + std::to_string(it->size()) + " prompts, more than " + std::to_string(kMaxPrompts));
  const bool text = it->front().is_string();
  for (const auto& p : *it) {
    if (text && p.is_string()) r.prompts.emplace_back(p.get<std::string>());
    else if (!text && p.is_array()) r.prompts.emplace_back(token_ids(p, "prompt", kPromptShape));
    else bad(kPromptShape);
  }
  return r;
}

ChatRequest parse_chat_request(const json& body) {
  ChatRequest r;
  r.params = parse_params(body, true);
  r.messages = parse_messages(body);
  return r;
}

TokenizeRequest parse_tokenize_request(const json& body) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  TokenizeRequest r;
  r.model = model_name(body);
  if (auto it = body.find("prompt"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) bad("'prompt' must be a string");
    r.prompt = it->get<std::string>();
  } else {
    if (!body.contains("messages")) bad("'prompt' or 'messages' is required");
    r.messages = parse_messages(body);
  }
  r.add_special_tokens = boolean(body, "add_special_tokens", r.prompt.has_value());
  r.add_generation_prompt = boolean(body, "add_generation_prompt", true);
  r.return_token_strs = boolean(body, "return_token_strs", false);
  return r;
}

DetokenizeRequest parse_detokenize_request(const json& body) {
  if (!body.is_object()) bad("the request body must be a JSON object");
  DetokenizeRequest r;
  r.model = model_name(body);
  auto it = body.find("tokens");
  if (it == body.end() || it->is_null()) bad("'tokens' is required");
  r.tokens = token_ids(*it, "tokens", "'tokens' must be a non-empty list of token ids");
  return r;
}

ReplyJson logprobs_json(bool chat, const std::vector<LoggedToken>& tokens, int64_t first_offset, int64_t* end_offset) {
  auto shown = [](float logprob) { return std::max(logprob, -9999.0f); };
  if (chat) {
    auto bytes = [](const std::string& s) {
      ReplyJson b = ReplyJson::array();
      for (unsigned char c : s) b.push_back(c);
      return b;
    };
    ReplyJson content = ReplyJson::array();
    for (const LoggedToken& t : tokens) {
      ReplyJson top = ReplyJson::array();
      for (const auto& [text, logprob] : t.top)
        top.push_back({{"token", text}, {"logprob", shown(logprob)}, {"bytes", bytes(text)}});
      content.push_back({{"token", t.text},
                         {"logprob", t.logprob ? ReplyJson(shown(*t.logprob)) : ReplyJson(nullptr)},
                         {"bytes", bytes(t.text)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  // Python's len(): characters, not bytes (continuation bytes 10xxxxxx do not count).
  auto characters = [](const std::string& s) {
    return static_cast<int64_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
  };
  ReplyJson offsets = ReplyJson::array(), logprobs = ReplyJson::array(), texts = ReplyJson::array(), tops = ReplyJson::array();
  int64_t offset = first_offset;
  for (const LoggedToken& t : tokens) {
    offsets.push_back(offset);
    offset += characters(t.text);
    texts.push_back(t.text);
    if (!t.logprob) {
      logprobs.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    logprobs.push_back(shown(*t.logprob));
    ReplyJson top = {{t.text, shown(*t.logprob)}};  // the token itself, then its alternatives
    for (const auto& [text, logprob] : t.top)
      if (!top.contains(text)) top[text] = shown(logprob);
    tops.push_back(top);
  }
  if (end_offset) *end_offset = offset;
  return {{"text_offset", offsets}, {"token_logprobs", logprobs}, {"tokens", texts}, {"top_logprobs", tops}};
}

ReplyJson full_reply(const ReplyHeader& h, const std::vector<ChoiceReply>& choices, const Usage& usage) {
  ReplyJson reply = object_base(h, false);
  reply["choices"] = ReplyJson::array();
  for (const ChoiceReply& c : choices) {
    ReplyJson choice = {{"index", c.index}};
    if (h.chat) choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else choice["text"] = c.text;
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = finish_json(c.finish_reason);
    reply["choices"].push_back(choice);
  }
  reply["usage"] = usage_json(usage);
  return reply;
}

ReplyJson text_chunk(const ReplyHeader& h, const ChoiceReply& piece) {
  ReplyJson chunk = object_base(h, true);
  ReplyJson choice = {{"index", piece.index}};
  if (h.chat)
    choice["delta"] = piece.text.empty() && !piece.finish_reason.empty() ? ReplyJson::object() : ReplyJson{{"content", piece.text}};
  else
    choice["text"] = piece.text;
  choice["logprobs"] = piece.logprobs;
  choice["finish_reason"] = finish_json(piece.finish_reason);
  chunk["choices"] = ReplyJson::array({choice});
  return chunk;
}

ReplyJson role_chunk(const ReplyHeader& h, int64_t index) {
  ReplyJson chunk = object_base(h, true);
  chunk["choices"] = ReplyJson::array(
      {{{"index", index}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"finish_reason", nullptr}}});
  return chunk;
}

ReplyJson usage_chunk(const ReplyHeader& h, const Usage& usage) {
  ReplyJson chunk = object_base(h, true);
  chunk["choices"] = ReplyJson::array();
  chunk["usage"] = usage_json(usage);
  return chunk;
}

}  // namespace lowrank::serve
