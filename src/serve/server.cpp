#include "lowrank/serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <mutex>
#include <random>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/serve/adapter_registry.h"
#include "lowrank/serve/paged_decode_step.h"
#include "lowrank/serve/metrics.h"
#include "lowrank/serve/openai_protocol.h"
#include "lowrank/serve/scheduler.h"
#include "lowrank/serve/text_stream.h"
#include "lowrank/tokenizer/chat_template.h"

namespace lowrank::serve {
namespace {

using json = nlohmann::json;

// The HTTP thread pool's ceiling (see Impl's constructor).
constexpr int64_t kMaxHttpThreads = 1024;

// Text from the model may hold invalid UTF-8 (a token cut inside a character): replaced, not thrown.
std::string dump(const ReplyJson& j) { return j.dump(-1, ' ', false, ReplyJson::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const ReplyJson& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

std::string sse(const ReplyJson& event) { return "data: " + dump(event) + "\n\n"; }

const char* finish_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "abort";
    case FinishReason::Failed: return "error";
  }
  return "error";
}

uint64_t random_u64() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

std::string request_id(bool chat) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(random_u64()));
  return std::string(chat ? "chatcmpl-" : "cmpl-") + hex;
}

const json& required_string(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_string() || it->get<std::string>().empty())
    throw ApiError(400, std::string("'") + key + "' is required (a non-empty string)");
  return *it;
}

// One choice of a reply as its sequence's tokens arrive: its text, and its tokens with their
// log-probabilities when the request asked for them.
struct Choice {
  Choice(int64_t index, TextStream text, int64_t prompt_tokens)
      : index(index), text(std::move(text)), prompt_tokens(prompt_tokens) {}

  int64_t index = 0;
  std::shared_ptr<SequenceChannel> channel;
  TextStream text;
  int64_t prompt_tokens = 0;
  std::string echo;                  // echo: the prompt's text, before the reply's
  std::vector<int32_t> echo_ids;     // echo with logprobs: the prompt's tokens, logged before the reply's
  bool hide_generated = false;       // echo with max_tokens 0: the one token generated is not part of the reply
  std::string finish_reason;         // "" until the choice has ended
  std::string error;                 // the compute's message when it failed
  bool started = false;              // the first update (which brings the prompt's log-probabilities) is in
  std::vector<LoggedToken> logged;   // with logprobs: tokens not yet handed out
  int64_t text_offset = 0;           // streamed: where the next piece's logged tokens start

  int64_t completion_tokens() const { return hide_generated ? 0 : text.tokens(); }
  // Waits for the next tokens and returns the text to send; sets finish_reason at the end. A stop
  // string ends the choice here and cancels the rest of the sequence.
  std::string advance(const tok::Tokenizer& tokenizer, bool logprobs) {
    SequenceChannel::Update u = channel->wait();
    auto token_text = [&](int32_t id) { return tokenizer.decode({id}); };
    auto log = [&](const infer::PositionLogprobs& p) {
      LoggedToken t{token_text(p.chosen.id), p.chosen.logprob, {}};
      for (const infer::TokenLogprob& alt : p.top) t.top.emplace_back(token_text(alt.id), alt.logprob);
      logged.push_back(std::move(t));
    };
    std::string delta;
    if (!started) {
      started = true;
      delta = echo;
      if (logprobs && !echo_ids.empty()) {
        logged.push_back({token_text(echo_ids[0]), std::nullopt, {}});
        for (const auto& p : u.prompt_logprobs) log(p);
      }
    }
    for (size_t i = 0; i < u.tokens.size() && !hide_generated; ++i) {
      delta += text.add(u.tokens[i]);
      if (logprobs) log(u.logprobs.at(i));
      if (text.stopped()) {
        channel->cancel();
        finish_reason = "stop";
        return delta;
      }
    }
    if (u.finished) {
      if (!hide_generated) delta += text.flush();
      const bool ran = *u.finished == FinishReason::Eos || *u.finished == FinishReason::Length;
      finish_reason = hide_generated && ran ? "length" : finish_name(*u.finished);  // its one token is not shown
      error = u.error;
    }
    return delta;
  }
};

// The reply of one generation request: a choice per prompt, shared by the plain and streamed forms.
struct Reply {
  ReplyHeader header;
  std::vector<Choice> choices;
  bool include_usage = false;
  bool continuous_usage = false;  // every chunk with the usage so far (vLLM's continuous_usage_stats)
  bool logprobs = false;
  size_t streaming = 0;        // streamed: the choice being written (one after the other)
  bool role_sent = false;      // streamed chat: the choice being written has had its role chunk

  Usage usage() const {
    Usage u;
    for (const Choice& c : choices) {
      u.prompt_tokens += c.prompt_tokens;
      u.completion_tokens += c.completion_tokens();
    }
    return u;
  }
  // Ends the other choices' sequences (one failed, or the client left).
  void cancel_all() {
    for (Choice& c : choices)
      if (c.channel && c.finish_reason.empty()) c.channel->cancel();
  }
  // A piece of `c` to send: its new text and logged tokens; null logprobs unless asked for (and,
  // in a streamed chunk, when it brings no tokens).
  ChoiceReply piece(Choice& c, std::string text, bool streamed) {
    ChoiceReply p{c.index, std::move(text), c.finish_reason, nullptr};
    if (logprobs && !(streamed && c.logged.empty())) {
      p.logprobs = logprobs_json(header.chat, c.logged, c.text_offset, &c.text_offset);
      c.logged.clear();
    }
    return p;
  }
};

// Replies still being written. Shutting down waits for them before it stops listening: httplib
// stops writing a stream once the server stops, which would cut the last chunks off.
class OpenReplies {
 public:
  void open() {
    std::lock_guard lock(mutex_);
    ++count_;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      --count_;
    }
    none_.notify_all();
  }
  void wait_until_none() {
    std::unique_lock lock(mutex_);
    none_.wait(lock, [&] { return count_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable none_;
  int64_t count_ = 0;
};

// Debian's libcpp-httplib is built with a listen backlog of 5: a burst of clients overflows it and
// the kernel resets the connections beyond (seen: 18 of 33 concurrent clients failed). listen()
// again on the bound socket raises it.
class HttpServer : public httplib::Server {
 public:
  void raise_listen_backlog() { ::listen(svr_sock_, SOMAXCONN); }
};

}  // namespace

static std::unique_ptr<DecodeStep> make_step(const model::Model& m, const ServerOptions& o) {
  const int64_t blocks =
      o.kv_cache_blocks > 0 ? o.kv_cache_blocks : PagedDecodeStep::blocks_for_batch(m.config(), o.max_batch, m.device());
  return std::make_unique<PagedDecodeStep>(m, blocks, o.max_gpu_adapters, o.merged_adapters);
}

struct Server::Impl {
  const model::Model& model;
  const tok::Tokenizer tokenizer;
  const ServerOptions options;
  const std::optional<std::string> base_chat_template;
  const std::vector<int32_t> eos_ids;
  AdapterRegistry adapters;
  std::unique_ptr<DecodeStep> compute;
  Scheduler scheduler;
  ServerMetrics metrics;
  HttpServer http;
  std::atomic<bool> draining{false};
  OpenReplies open_replies;
  std::mutex shutdown_mutex;

  Impl(const model::Model& m, tok::Tokenizer tk, ServerOptions o)
      : model(m), tokenizer(std::move(tk)), options(std::move(o)),
        base_chat_template(tok::resolve_chat_template(options.chat_template, {}, m.source())),
        eos_ids(infer::model_eos_ids(m.config())), adapters(m, options.chat_template, /*mixable_on_host=*/m.device().is_cuda(), options.adapter_dir,
                 options.max_loaded_adapters), compute(make_step(m, options)),
        scheduler(*compute, options.max_batch) {
    // Every waiting request holds a thread (httplib's default pool has 8): room for a full
    // batch plus as many again queued, and the cheap endpoints. Capped: each thread is a task
    // of the OS, and 2 · 4096 of them can exhaust a machine's process limit.
    const size_t threads = static_cast<size_t>(std::clamp<int64_t>(2 * options.max_batch + 16, 32, kMaxHttpThreads));
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(options.max_body_bytes);
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds one back until
    // the client acknowledges the last, which a delayed ACK may put off by up to 40 ms.
    http.set_tcp_nodelay(true);
    // httplib's default is SO_REUSEPORT, with which a second server on the same port starts and
    // silently takes half the connections; SO_REUSEADDR only allows a quick restart.
    http.set_socket_options([](socket_t sock) {
      const int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    routes();
  }

  void routes();
  // Runs a handler, turning what it throws into an OpenAI-style error reply.
  httplib::Server::Handler guarded(std::function<void(const httplib::Request&, httplib::Response&)> handler);
  void generate(const httplib::Request& req, httplib::Response& res, bool chat);
  // A completion prompt's token ids (text with the tokenizer's special tokens, e.g. BOS).
  std::vector<int32_t> prompt_ids(const Prompt& prompt) const;
  // The adapter a request's `model` names: null for the base model ("" or its name); unknown: 404.
  std::shared_ptr<ServedAdapter> model_named(const std::string& name);
  // A conversation through the model's chat template (the adapter's own when it has one).
  std::string render_chat(const ServedAdapter* adapter, const json& messages, bool add_generation_prompt) const;
  // vLLM's tokenizer endpoints.
  ReplyJson tokenize(const TokenizeRequest& r);
  ReplyJson detokenize(const DetokenizeRequest& r);
  ReplyJson tokenizer_info() const;
  void stream(httplib::Response& res, std::shared_ptr<Reply> reply);
  // One call of a stream's content provider: waits for the next tokens and writes their events
  // (the last ones and [DONE] at the end). False when the client has gone.
  bool write_stream_events(Reply& reply, httplib::DataSink& sink);
  ReplyJson models() const;
  void load_adapter(const std::string& name, const std::string& spec);
};

httplib::Server::Handler Server::Impl::guarded(std::function<void(const httplib::Request&, httplib::Response&)> handler) {
  return [this, handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (const ApiError& e) {
      send_json(res, e.status(), error_body(e.status(), e.what()));
    } catch (const Error& e) {
      send_json(res, 400, error_body(400, e.what()));
    } catch (const std::bad_alloc&) {
      send_json(res, 503, error_body(503, "out of memory"));
    } catch (const std::exception& e) {
      log_warn("serve: ", req.method, " ", req.path, ": internal error: ", e.what());
      send_json(res, 500, error_body(500, std::string("internal error: ") + e.what()));
    }
  };
}

void Server::Impl::routes() {
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    send_json(res, 401, error_body(401, "missing or wrong API key (send \"Authorization: Bearer KEY\")"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // What httplib refuses itself (unknown path, body over the limit, malformed HTTP) gets the
  // same error body as ours.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    std::string message = "HTTP error " + std::to_string(res.status);
    if (res.status == 400) message = "malformed HTTP request";
    if (res.status == 404) message = "no endpoint " + req.method + " " + req.path;
    if (res.status == 413) message = "the request body is larger than " + std::to_string(options.max_body_bytes) + " bytes";
    // httplib reads a form-encoded body (curl -d without a Content-Type) into form fields, and
    // refuses one above 8 KiB whatever the limit: a JSON body over 8 KiB sent so must say why.
    if (res.status == 413 && req.get_header_value<uint64_t>("Content-Length") <= options.max_body_bytes &&
        req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0)
      message = "a request body sent as application/x-www-form-urlencoded is limited to 8192 bytes: send it with "
                "\"Content-Type: application/json\" (curl -H 'Content-Type: application/json')";
    send_json(res, res.status, error_body(res.status, message));
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_json(res, 500, error_body(500, "internal error"));
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_response(res.status);
    log_debug("serve: ", req.method, " ", req.path, " ", res.status);
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = draining ? 503 : 200;
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    const std::optional<DeviceMemoryCounters> memory =
        model.device().is_cuda() ? std::optional(device_memory_counters(model.device())) : std::nullopt;
    res.set_content(metrics.render(scheduler.stats(), scheduler.max_batch(), static_cast<int64_t>(adapters.list().size()),
                                   compute->adapter_cache_stats(), memory, adapters.folder_stats()),
                    "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) { send_json(res, 200, models()); }));
  http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); }));
  http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); }));
  // vLLM's tokenizer endpoints, outside /v1 (and its API key) as there; lm-evaluation-harness
  // tokenizes through them when /tokenizer_info answers.
  http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
    send_json(res, 200, tokenize(parse_tokenize_request(parse_body(req.body))));
  }));
  http.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
    send_json(res, 200, detokenize(parse_detokenize_request(parse_body(req.body))));
  }));
  http.Get("/tokenizer_info", guarded([this](const httplib::Request&, httplib::Response& res) { send_json(res, 200, tokenizer_info()); }));
  if (!options.enable_lora_loading) return;
  http.Post("/v1/load_lora_adapter", guarded([this](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req.body);
    const std::string name = required_string(body, "lora_name"), path = required_string(body, "lora_path");
    if (adapters.find(name)) throw ApiError(400, "an adapter named '" + name + "' is already loaded");
    load_adapter(name, path);  // Error (not an adapter for this model, ...) -> 400
    log_info("serve: loaded adapter ", name, " from ", path);
    res.set_content("Success: LoRA adapter '" + name + "' added successfully.", "text/plain");
  }));
  http.Post("/v1/unload_lora_adapter", guarded([this](const httplib::Request& req, httplib::Response& res) {
    const std::string name = required_string(parse_body(req.body), "lora_name");
    if (!adapters.unload(name)) throw ApiError(404, "the LoRA adapter '" + name + "' cannot be found");
    log_info("serve: unloaded adapter ", name);
    res.set_content("Success: LoRA adapter '" + name + "' removed successfully.", "text/plain");
  }));
}

void Server::Impl::load_adapter(const std::string& name, const std::string& spec) {
  if (name == options.model_name) throw error("adapter name '", name, "' is the base model's name");
  adapters.load(name, spec);
}

ReplyJson Server::Impl::models() const {
  const int64_t context = model.config().max_position_embeddings;
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  ReplyJson data = ReplyJson::array({{{"id", options.model_name}, {"object", "model"}, {"created", created},
                            {"owned_by", "lowrank"}, {"root", model.source()}, {"parent", nullptr},
                            {"max_model_len", context}}});
  for (const auto& a : adapters.list())
    data.push_back({{"id", a->name}, {"object", "model"}, {"created", created}, {"owned_by", "lowrank"},
                    {"root", a->dir}, {"parent", options.model_name}, {"max_model_len", context}});
  return {{"object", "list"}, {"data", data}};
}

std::shared_ptr<ServedAdapter> Server::Impl::model_named(const std::string& name) {
  if (name.empty() || name == options.model_name) return nullptr;
  std::shared_ptr<ServedAdapter> adapter = adapters.find_or_load(name);  // Error (not an adapter) -> 400
  if (!adapter) throw ApiError(404, "the model '" + name + "' does not exist");
  return adapter;
}

std::string Server::Impl::render_chat(const ServedAdapter* adapter, const json& messages, bool add_generation_prompt) const {
  const auto& chat_template = adapter ? adapter->chat_template : base_chat_template;
  if (!chat_template)
    throw ApiError(400, "the model '" + (adapter ? adapter->name : options.model_name) +
                            "' has no chat template; start the server with --chat-template NAME|FILE");
  json cfg = tokenizer.config();
  cfg["chat_template"] = *chat_template;
  return tok::apply_chat_template(cfg, messages, add_generation_prompt);  // Error -> 400
}

ReplyJson Server::Impl::tokenize(const TokenizeRequest& r) {
  const std::shared_ptr<ServedAdapter> adapter = model_named(r.model);
  // A conversation's template holds its special tokens: add_special_tokens defaults to false there.
  const std::vector<int32_t> ids = tokenizer.encode(r.prompt ? *r.prompt : render_chat(adapter.get(), r.messages, r.add_generation_prompt),
                                                    r.add_special_tokens);
  ReplyJson strs = nullptr;
  if (r.return_token_strs) {
    strs = ReplyJson::array();
    for (int32_t id : ids) strs.push_back(tokenizer.id_to_token(id));
  }
  return {{"count", ids.size()}, {"max_model_len", model.config().max_position_embeddings}, {"tokens", ids}, {"token_strs", strs}};
}

ReplyJson Server::Impl::detokenize(const DetokenizeRequest& r) {
  model_named(r.model);
  for (int32_t id : r.tokens)
    if (id >= tokenizer.vocab_size())
      throw ApiError(400, "'tokens' holds token id " + std::to_string(id) + ", outside the vocabulary of " +
                              std::to_string(tokenizer.vocab_size()));
  return {{"prompt", tokenizer.decode(r.tokens)}};
}

ReplyJson Server::Impl::tokenizer_info() const {
  // tokenizer_config.json as transformers reads it (vLLM's /tokenizer_info): the special tokens
  // as strings, the chat template the server uses, the context length.
  ReplyJson info = ReplyJson::parse(tokenizer.config().dump());
  info.erase("added_tokens_decoder");
  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"})
    if (info.contains(key) && info[key].is_object()) info[key] = info[key].value("content", ReplyJson(nullptr));
  if (base_chat_template) info["chat_template"] = *base_chat_template;
  info["model_max_length"] = model.config().max_position_embeddings;
  if (!info.contains("tokenizer_class")) info["tokenizer_class"] = "PreTrainedTokenizerFast";
  return info;
}

std::vector<int32_t> Server::Impl::prompt_ids(const Prompt& prompt) const {
  if (const auto* text = std::get_if<std::string>(&prompt)) return tokenizer.encode(*text, true);
  const auto& ids = std::get<std::vector<int32_t>>(prompt);
  for (int32_t id : ids)
    if (id >= model.config().vocab_size)
      throw ApiError(400, "'prompt' holds token id " + std::to_string(id) + ", outside the vocabulary of " +
                              std::to_string(model.config().vocab_size));
  return ids;
}

void Server::Impl::generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (draining) throw ApiError(503, "the server is shutting down");
  const json body = parse_body(req.body);
  GenerationParams params;
  std::optional<CompletionRequest> completion;
  std::optional<ChatRequest> conversation;
  if (chat) params = (conversation = parse_chat_request(body))->params;
  else params = (completion = parse_completion_request(body))->params;

  const std::shared_ptr<ServedAdapter> adapter = model_named(params.model);
  std::vector<std::vector<int32_t>> prompts;
  if (chat) {
    prompts.push_back(tokenizer.encode(render_chat(adapter.get(), conversation->messages, true), false));
  } else {
    for (const Prompt& p : completion->prompts) prompts.push_back(prompt_ids(p));
  }

  const int64_t context = model.config().max_position_embeddings;
  auto reply = std::make_shared<Reply>();
  reply->header = {request_id(chat), static_cast<int64_t>(std::time(nullptr)), adapter ? adapter->name : options.model_name, chat};
  reply->include_usage = params.include_usage;
  reply->continuous_usage = params.continuous_usage;
  reply->logprobs = params.top_logprobs >= 0;
  std::vector<SequenceRequest> sequences;
  if (prompts.size() * static_cast<size_t>(params.n) > kMaxPrompts)
    throw ApiError(400, std::to_string(prompts.size()) + " prompts with n = " + std::to_string(params.n) + " are more than " +
                            std::to_string(kMaxPrompts) + " choices");
  const int64_t vocab = model.config().vocab_size;
  for (const auto& [id, bias] : params.sampling.logit_bias)
    if (id >= vocab) throw ApiError(400, "'logit_bias' names token " + std::to_string(id) + ", outside the vocabulary of " + std::to_string(vocab));
  // What ends a choice: the model's eos ids (unless ignore_eos) and stop_token_ids.
  std::vector<int32_t> stop_ids = params.ignore_eos ? std::vector<int32_t>{} : eos_ids;
  for (int32_t id : params.stop_token_ids) {
    if (id >= vocab) throw ApiError(400, "'stop_token_ids' holds " + std::to_string(id) + ", outside the vocabulary of " + std::to_string(vocab));
    stop_ids.push_back(id);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t>& prompt = prompts[i];
    if (prompt.empty()) throw ApiError(400, "the prompt is empty (no tokens)");
    const int64_t n = static_cast<int64_t>(prompt.size());
    const int64_t asked = params.max_tokens.value_or(chat ? std::max<int64_t>(context - n, 1) : 16);
    const int64_t max_tokens = std::max<int64_t>(asked, 1);  // echo with 0: one token is made, not shown
    if (max_tokens > context - n)  // not n + max_tokens: max_tokens may be near INT64_MAX
      throw ApiError(400, "this model's maximum context length is " + std::to_string(context) + " tokens; the request has " +
                              std::to_string(n) + " prompt tokens and asks for " + std::to_string(max_tokens) +
                              " more: reduce the prompt or max_tokens");
    for (int64_t j = 0; j < params.n; ++j) {  // choice i·n + j (OpenAI's order)
      Choice c(static_cast<int64_t>(i) * params.n + j, TextStream(tokenizer, params.stop), n);
      c.hide_generated = asked == 0;
      if (params.echo) {
        const auto* text = std::get_if<std::string>(&completion->prompts[i]);
        c.echo = text ? *text : tokenizer.decode(prompt);
        if (reply->logprobs) c.echo_ids = prompt;
      }
      reply->choices.push_back(std::move(c));

      SequenceRequest seq;
      seq.prompt = prompt;
      seq.options.max_new_tokens = max_tokens;
      seq.options.eos_ids = stop_ids;
      seq.options.sampling = params.sampling;
      // A seed gives choice j the seed + j (the same draws for the same request), else each its own.
      seq.options.sampling.seed = params.seed_given ? params.sampling.seed + static_cast<uint64_t>(j) : random_u64();
      if (adapter) {
        seq.hook = std::shared_ptr<model::ProjectionHook>(adapter, &adapter->hook);
        seq.adapter = std::shared_ptr<const lora::Adapter>(adapter, &adapter->adapter);
        seq.adapter_scale = adapter->scale;
      }
      if (asked > 0) seq.top_logprobs = params.top_logprobs;
      if (params.echo) seq.prompt_top_logprobs = params.top_logprobs;
      sequences.push_back(std::move(seq));
    }
  }
  try {
    for (size_t i = 0; i < sequences.size(); ++i) reply->choices[i].channel = scheduler.submit(std::move(sequences[i]));
  } catch (const Error& e) {
    reply->cancel_all();
    throw ApiError(503, e.what());  // draining began meanwhile
  }
  open_replies.open();
  if (params.stream) return stream(res, reply);  // closed when the stream has been written
  struct Closer {
    OpenReplies& replies;
    ~Closer() { replies.close(); }
  } closer{open_replies};
  std::vector<ChoiceReply> out;
  for (Choice& c : reply->choices) {
    while (c.finish_reason.empty()) c.advance(tokenizer, reply->logprobs);
    metrics.count_finished(c.finish_reason);
    if (!c.error.empty()) {
      reply->cancel_all();
      throw ApiError(500, "generation failed: " + c.error);
    }
    out.push_back(reply->piece(c, c.echo + c.text.text(), false));
  }
  send_json(res, 200, full_reply(reply->header, out, reply->usage()));
}

bool Server::Impl::write_stream_events(Reply& reply, httplib::DataSink& sink) {
  auto send = [&](const std::string& s) {
    if (sink.write(s.data(), s.size())) return true;
    reply.cancel_all();  // the client went away: free its places in the batch
    return false;
  };
  // A chunk of a choice, with the usage so far when the request asked for it in every chunk.
  auto send_chunk = [&](ReplyJson chunk) {
    if (reply.continuous_usage) chunk["usage"] = usage_json(reply.usage());
    return send(sse(chunk));
  };
  Choice& c = reply.choices[reply.streaming];
  if (reply.header.chat && !reply.role_sent) {  // each choice's first chunk, as OpenAI's and vLLM's streams
    reply.role_sent = true;
    if (!send_chunk(role_chunk(reply.header, c.index))) return false;
  }
  std::string delta = c.advance(tokenizer, reply.logprobs);
  if (c.finish_reason.empty()) {
    if (delta.empty() && c.logged.empty()) return true;
    return send_chunk(text_chunk(reply.header, reply.piece(c, std::move(delta), true)));
  }
  metrics.count_finished(c.finish_reason);
  if (!c.error.empty()) {
    reply.cancel_all();
    if (!send(sse(error_body(500, "generation failed: " + c.error)))) return false;
  } else {
    if (!send_chunk(text_chunk(reply.header, reply.piece(c, std::move(delta), true)))) return false;
    if (++reply.streaming < reply.choices.size()) {  // the next choice's events
      reply.role_sent = false;
      return true;
    }
    if (reply.include_usage && !send(sse(usage_chunk(reply.header, reply.usage())))) return false;
  }
  if (!send("data: [DONE]\n\n")) return false;
  sink.done();
  return true;
}

void Server::Impl::stream(httplib::Response& res, std::shared_ptr<Reply> reply) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, reply](size_t, httplib::DataSink& sink) {
        try {
          return write_stream_events(*reply, sink);
        } catch (const std::exception& e) {  // httplib does not catch what a content provider throws
          log_warn("serve: stream ", reply->header.id, ": ", e.what());
          reply->cancel_all();
          return false;
        }
      },
      [this, reply](bool success) {
        if (!success) {
          for (Choice& c : reply->choices)
            if (c.finish_reason.empty()) metrics.count_finished("abort");
          reply->cancel_all();
        }
        open_replies.close();
      });
}

Server::Server(const model::Model& model, tok::Tokenizer tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(tokenizer), std::move(options))) {}

Server::~Server() { shutdown(); }

void Server::load_adapter(const std::string& name, const std::string& spec) { impl_->load_adapter(name, spec); }

int Server::bind(const std::string& host, int port) {
  const int bound = port == 0 ? impl_->http.bind_to_any_port(host) : (impl_->http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) throw error("cannot listen on ", host, ":", port, " (", std::strerror(errno), ")");
  impl_->http.raise_listen_backlog();
  return bound;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::shutdown() {
  std::lock_guard lock(impl_->shutdown_mutex);
  impl_->draining = true;
  impl_->scheduler.drain();                  // every accepted request gets its last token
  impl_->open_replies.wait_until_none();     // and its reply is written
  impl_->http.stop();
}

}  // namespace lowrank::serve
