// Encode throughput (MB/s, one thread) of the four test tokenizers on the parity corpus
// repeated to ~10 MB, each document encoded separately (as the HF reference timing does).
//   bench_tokenizer [--data tests/data] [--mb 10] [--tokenizers llama3,qwen3,llama2,gpt2]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::string data = "tests/data", names = "llama3,qwen3,llama2,gpt2";
  double mb = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--data")) data = argv[i + 1];
    else if (!std::strcmp(argv[i], "--mb")) mb = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokenizers")) names = argv[i + 1];
    else { std::fprintf(stderr, "error: unknown option %s\n", argv[i]); return 2; }
  }
  std::vector<std::string> docs;
  size_t corpus_bytes = 0;
  std::vector<fs::path> files;
  if (!fs::exists(fs::path(data) / "corpus")) {
    std::fprintf(stderr, "error: %s/corpus is missing (run scripts/fetch-test-data.sh)\n", data.c_str());
    return 2;
  }
  for (auto& e : fs::directory_iterator(fs::path(data) / "corpus")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    docs.push_back(ss.str());
    corpus_bytes += docs.back().size();
  }
  size_t reps = std::max<size_t>(1, static_cast<size_t>(mb * 1e6 / corpus_bytes + 0.5));
  std::printf("corpus: %zu documents, %zu bytes, x%zu = %.1f MB per tokenizer\n", docs.size(),
              corpus_bytes, reps, corpus_bytes * reps / 1e6);
  std::stringstream list(names);
  std::string name;
  while (std::getline(list, name, ',')) {
    try {
      auto t0 = Clock::now();
      auto tok = lowrank::tok::Tokenizer::load((fs::path(data) / "tokenizers" / name).string());
      double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
      size_t tokens = 0;
      for (auto& d : docs) tokens += tok.encode(d).size();  // warm-up (fills the word cache)
      auto t1 = Clock::now();
      for (size_t r = 0; r < reps; ++r)
        for (auto& d : docs) tokens += tok.encode(d).size();
      double s = std::chrono::duration<double>(Clock::now() - t1).count();
      std::printf("%-7s %7.2f MB/s  %6.2f Mtok/s  (load %.2f s)\n", name.c_str(),
                  corpus_bytes * reps / s / 1e6, tokens * reps / (reps + 1.0) / s / 1e6, load_s);
      std::fflush(stdout);
    } catch (const lowrank::Error& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 2;
    }
  }
  return 0;
}
