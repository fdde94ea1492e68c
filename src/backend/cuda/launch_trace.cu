#include "launch_trace.cuh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace lowrank::cuda {
namespace {

// The first kLaunches traced launches get rows (a graph's rows are those of its recording), each of
// up to kBlocks blocks (a launch of more is not traced): 64 MiB of device memory while tracing.
constexpr int64_t kLaunches = 2048, kBlocks = 1024;

struct Trace {
  std::mutex mu;
  std::string file;
  int device = -1;
  LaunchStamp* stamps = nullptr;  // [kLaunches, kBlocks]
  std::vector<std::pair<std::string, int64_t>> launches;
};

Trace& trace() {
  static Trace* t = [] {
    auto* t = new Trace;
    if (const char* f = std::getenv("LOWRANK_DECODE_TRACE")) t->file = f;
    return t;
  }();
  return *t;
}

void write_trace() {
  Trace& t = trace();
  if (!t.stamps) return;
  cudaSetDevice(t.device);
  cudaDeviceSynchronize();
  std::vector<LaunchStamp> host(static_cast<size_t>(kLaunches * kBlocks));
  if (cudaMemcpy(host.data(), t.stamps, host.size() * sizeof(LaunchStamp), cudaMemcpyDeviceToHost) != cudaSuccess) return;
  FILE* f = std::fopen(t.file.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "warning: LOWRANK_DECODE_TRACE: cannot write %s\n", t.file.c_str());
    return;
  }
  if (std::getenv("LOWRANK_DECODE_TRACE_BLOCKS"))  // every block
    for (size_t i = 0; i < t.launches.size() && i < size_t(kLaunches); ++i)
      for (int64_t b = 0; b < t.launches[i].second && b < kBlocks; ++b) {
        const LaunchStamp& s = host[i * kBlocks + b];
        std::fprintf(f, "B %zu %s %lld %llu %llu %llu %llu\n", i, t.launches[i].first.c_str(), static_cast<long long>(b),
                     s.start, s.wait, s.mid, s.end);
      }
  for (size_t i = 0; i < t.launches.size() && i < size_t(kLaunches); ++i) {
    unsigned long long s0 = ~0ULL, s1 = 0, w0 = ~0ULL, w1 = 0, m1 = 0, e1 = 0;
    for (int64_t b = 0; b < t.launches[i].second && b < kBlocks; ++b) {
      const LaunchStamp& s = host[i * kBlocks + b];
      if (s.start) s0 = std::min(s0, s.start), s1 = std::max(s1, s.start);
      if (s.wait) w0 = std::min(w0, s.wait), w1 = std::max(w1, s.wait);
      m1 = std::max(m1, s.mid);
      e1 = std::max(e1, s.end);
    }
    std::fprintf(f, "%zu %s %lld %llu %llu %llu %llu %llu %llu\n", i, t.launches[i].first.c_str(),
                 static_cast<long long>(t.launches[i].second), s0, s1, w0 == ~0ULL ? 0 : w0, w1, m1, e1);
  }
  std::fclose(f);
}

}  // namespace

LaunchStamp* next_launch_stamps(Device d, const char* kernel, int64_t blocks) {
  Trace& t = trace();
  if (t.file.empty()) return nullptr;
  std::lock_guard<std::mutex> lock(t.mu);
  if (!t.stamps) {
    t.device = d.index;
    stream_for(d);
    LR_CUDA(cudaMalloc(&t.stamps, sizeof(LaunchStamp) * kLaunches * kBlocks));
    LR_CUDA(cudaMemset(t.stamps, 0, sizeof(LaunchStamp) * kLaunches * kBlocks));
    std::atexit(write_trace);
  }
  const size_t i = t.launches.size();
  // The rows live on the first traced device: launches elsewhere are not traced.
  if (i >= size_t(kLaunches) || blocks > kBlocks || d.index != t.device) return nullptr;
  t.launches.emplace_back(kernel, blocks);
  return t.stamps + i * kBlocks;
}

}  // namespace lowrank::cuda
