// Load generator for `lowrank serve`: C concurrent clients send streamed completions over a set
// of models (the base model and adapters, round robin) and it reports output tokens/s, time to
// first token and inter-token latency (p50, p99) as one JSON line. Prints numbers; no pass/fail.
//   bench_serve_load [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--clients 16]
//                    [--requests 64] [--models base,a,b] [--prompt-tokens 128] [--max-tokens 64]
// Prompts are token ids in [3, 1000) (every vocabulary has them), greedy; a reply may end early
// at an eos token, and its tokens are counted as they come (usage).
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

struct Sample {
  double ttft = 0;                // seconds from sending to the first text
  std::vector<double> gaps;       // seconds between text events after the first
  int64_t tokens = 0;             // completion_tokens
  bool ok = false;
};

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

Sample one_request(const std::string& host, int port, const std::string& key, const json& body) {
  httplib::Client client(host, port);
  client.set_read_timeout(600, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Content-Type", "application/json"}};
  if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
  req.body = body.dump();
  Sample s;
  std::string pending;
  const auto sent = clock_type::now();
  auto last = sent;
  bool first = true;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    pending.append(data, n);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
      const std::string event = pending.substr(0, end);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const json chunk = json::parse(event.substr(6), nullptr, false);
      if (chunk.contains("usage")) s.tokens = chunk["usage"].value("completion_tokens", 0);
      if (!chunk.contains("choices") || chunk["choices"].empty() || chunk["choices"][0].value("text", "").empty()) continue;
      const auto now = clock_type::now();
      if (first) s.ttft = seconds(now - sent);
      else s.gaps.push_back(seconds(now - last));
      first = false;
      last = now;
    }
    return true;
  };
  auto res = client.send(req);
  s.ok = res && res->status == 200 && s.tokens > 0;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Load generator for lowrank serve"};
  std::string host = "127.0.0.1", key, models_text = "";
  int port = 8000, clients = 16, requests = 64, prompt_tokens = 128, max_tokens = 64;
  app.add_option("--host", host)->capture_default_str();
  app.add_option("--port", port)->capture_default_str();
  app.add_option("--api-key", key);
  app.add_option("--clients", clients)->capture_default_str();
  app.add_option("--requests", requests)->capture_default_str();
  app.add_option("--models", models_text, "Comma-separated `model` names (default: the server's base model)");
  app.add_option("--prompt-tokens", prompt_tokens)->capture_default_str();
  app.add_option("--max-tokens", max_tokens)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> models;
  std::stringstream names(models_text);
  for (std::string m; std::getline(names, m, ',');)
    if (!m.empty()) models.push_back(m);
  if (models.empty()) models.push_back("");  // no `model`: the base model

  std::atomic<int> next{0};
  std::mutex mutex;
  std::vector<Sample> samples;
  const auto start = clock_type::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      for (int i; (i = next++) < requests;) {
        std::vector<int> ids(prompt_tokens);
        for (int j = 0; j < prompt_tokens; ++j) ids[j] = 3 + (i * 7919 + j * 31) % 997;
        json body = {{"prompt", ids}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
        if (!models[i % models.size()].empty()) body["model"] = models[i % models.size()];
        Sample s = one_request(host, port, key, body);
        std::lock_guard lock(mutex);
        samples.push_back(std::move(s));
      }
    });
  for (auto& t : threads) t.join();
  const double wall = seconds(clock_type::now() - start);

  std::vector<double> ttft, itl;
  int64_t tokens = 0, failed = 0;
  for (const auto& s : samples) {
    if (!s.ok) {
      ++failed;
      continue;
    }
    tokens += s.tokens;
    ttft.push_back(s.ttft);
    itl.insert(itl.end(), s.gaps.begin(), s.gaps.end());
  }
  const json row = {{"clients", clients}, {"requests", requests}, {"failed", failed}, {"models", models.size()},
                    {"prompt_tokens", prompt_tokens}, {"max_tokens", max_tokens}, {"seconds", wall},
                    {"output_tokens", tokens}, {"output_tok_s", static_cast<double>(tokens) / wall},
                    {"ttft_p50_ms", 1e3 * percentile(ttft, 0.5)}, {"ttft_p99_ms", 1e3 * percentile(ttft, 0.99)},
                    {"itl_p50_ms", 1e3 * percentile(itl, 0.5)}, {"itl_p99_ms", 1e3 * percentile(itl, 0.99)}};
  std::printf("%s\n", row.dump().c_str());
  return failed == 0 ? 0 : 1;
}
