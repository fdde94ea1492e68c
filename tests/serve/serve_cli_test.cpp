// The `lowrank serve` command: bad flags and a port in use are `error:` exit 2; SIGTERM lets a
// running (streamed) request finish, refuses new ones, then exits 0.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "test_paths.h"

using namespace lowrank;
using json = nlohmann::json;

namespace {

std::string base_dir() { return test::source_dir() + "/models/base"; }

TEST(ServeCli, BadFlagsAreErrors) {
  const std::string model = " --model " + base_dir();
  std::vector<std::pair<std::string, std::string>> cases = {
      {"serve" + model + " --device cuda:7", "--device cuda:7"},  // no such GPU (here or on a 1-2 GPU box)
      {"serve" + model + " --kv-cache-blocks -1", "--kv-cache-blocks"},
      {"serve" + model + " --device tpu", "tpu"},
      {"serve" + model + " --max-batch 0", "--max-batch"},
      {"serve" + model + " --max-batch 100000000", "--max-batch"},  // 2 threads a sequence
      {"serve" + model + " --port 70000", "--port"},
      {"serve" + model + " --adapter nameless", "NAME=DIR"},
      {"serve" + model + " --adapter a=/nonexistent/adapter", "/nonexistent/adapter"},
      {"serve" + model + " --chat-template no-such-template", "--chat-template"},
      {"serve --model /nonexistent/model", "/nonexistent/model"},
      {"serve" + model + " --max-batch two", "--max-batch"},
      {"serve" + model + " --max-gpu-adapters 0", "--max-gpu-adapters"},
      {"serve" + model + " --merged-adapters -1", "--merged-adapters"},
      {"serve" + model + " --merged-adapters 1025", "--merged-adapters"},
      {"serve" + model + " --adapter-dir /nonexistent/folder", "--adapter-dir"},
      {"serve" + model + " --max-loaded-adapters 2", "--adapter-dir"},
      {"serve" + model + " --adapter-dir . --max-loaded-adapters -1", "--max-loaded-adapters"},
  };
  // A port another socket listens on (no silent sharing through SO_REUSEPORT).
  const int taken = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(taken, 1), 0);
  ASSERT_EQ(getsockname(taken, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  cases.push_back({"serve" + model + " --port " + std::to_string(ntohs(addr.sin_port)), "cannot listen on 127.0.0.1:"});
  for (const auto& [args, want] : cases) {
    auto r = test::run_cli(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(want), std::string::npos) << args << "\n" << r.err;
  }
  close(taken);
}

TEST(ServeCli, SigtermFinishesTheRunningRequestThenExits) {
  io::testing::ScratchDir d;
  const std::string err_file = d.file("serve.err");
  const std::vector<std::string> args = {test::cli_path(), "serve", "--model", base_dir(), "--port", "0"};
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the child: only async-signal-safe calls until exec
    const int fd = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    execv(argv[0], argv.data());
    _exit(127);
  }
  // The port it picked, from its startup line.
  int port = 0;
  const std::regex listening("on http://127\\.0\\.0\\.1:([0-9]+)");
  for (int i = 0; i < 600 && port == 0; ++i) {
    std::smatch m;
    const std::string err = test::slurp(err_file);
    if (std::regex_search(err, m, listening)) port = std::stoi(m[1]);
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_NE(port, 0) << test::slurp(err_file);

  // A streamed request: the stream must get all its chunks and [DONE] although the server stops.
  std::string events;
  std::thread client([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(300, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = json{{"prompt", "The"}, {"max_tokens", 200}, {"temperature", 0}, {"stream", true},
                    {"stream_options", {{"include_usage", true}}}}.dump();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      events.append(data, n);
      return true;
    };
    c.send(req);
  });
  httplib::Client probe("127.0.0.1", port);
  for (int i = 0; i < 600; ++i) {  // until the request runs
    auto m = probe.Get("/metrics");
    if (m && m->body.find("\nlowrank_running_sequences 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  // While it drains, a new request is refused with 503 (one sent before the signal took effect
  // may still be served; after the drain nothing listens any more).
  bool refused = false;
  for (int i = 0; i < 400 && !refused; ++i) {
    httplib::Client late("127.0.0.1", port);
    auto r = late.Post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})", "application/json");
    refused = !r || r->status == 503;
    if (r && r->status == 503) EXPECT_NE(r->body.find("shutting down"), std::string::npos) << r->body;
  }
  EXPECT_TRUE(refused);
  client.join();
  ASSERT_TRUE(events.ends_with("data: [DONE]\n\n")) << events;
  const auto usage_at = events.rfind("data: {");
  const json last = json::parse(events.substr(usage_at + 6, events.find("\n\n", usage_at) - usage_at - 6));
  EXPECT_TRUE(last["usage"]["completion_tokens"] == 200 || events.find("\"finish_reason\":\"stop\"") != std::string::npos)
      << last;
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << test::slurp(err_file);
  EXPECT_NE(test::slurp(err_file).find("SIGTERM: finishing running requests"), std::string::npos) << test::slurp(err_file);
}

}  // namespace
