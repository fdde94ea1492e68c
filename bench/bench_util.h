#pragma once
// Small helpers the benchmarks share: comma-separated number lists for their flags, and GPU time
// of a piece of work measured with CUDA events on the device's stream.
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#ifdef LOWRANK_WITH_CUDA
#include <cuda_runtime.h>

#include "lowrank/backend/cuda/device.h"
#endif

namespace lowrank::bench {

// "1,16,64" -> {1, 16, 64}.
inline std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoll(item));
  return out;
}

#ifdef LOWRANK_WITH_CUDA
// Mean milliseconds of `fn` on device d over `iters` runs after `warmup` runs, timed with events.
inline double time_ms(Device d, const std::function<void()>& fn, int warmup, int iters) {
  auto st = static_cast<cudaStream_t>(cuda::native_stream(d));
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, st);
  for (int i = 0; i < iters; ++i) fn();
  cudaEventRecord(b, st);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / iters;
}
#endif

}  // namespace lowrank::bench
