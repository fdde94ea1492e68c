// Segmented LoRA benchmark (GPU): ops::lora_rows_ (one shrink + one expand launch for a batch whose
// rows carry different adapters) against one GEMM pair per adapter over its rows (the rows sorted
// by adapter: the best case for the per-adapter road) and ops::lora_runs_ over the same runs (two
// grouped GEMM launches), bf16, rank 16, for the projections of the
// Qwen2.5-0.5B and Llama-3-8B shapes, batches of 1 / 16 / 64 rows over 1 / 8 / 64 adapters.
// Prints milliseconds per projection and the bandwidth of the adapter weights read (Σ distinct
// adapters' A + B, plus x and y). --rows / --adapters: other batches (a prefill of 64 prompts of
// 128 tokens: --rows 8192 --adapters 1,8,64).
//   usage: bench_lora_rows [--rank R] [--rows 1,16,64] [--adapters 1,8,64]
#ifdef LOWRANK_WITH_CUDA
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/ops/ops.h"

#include "bench_util.h"

using namespace lowrank;

namespace {

const Device kGpu = Device::cuda(0);

Tensor random_gpu(const Shape& s, uint64_t seed, float amp) {
  Tensor c = Tensor::empty(s);
  Rng rng(seed);
  for (int64_t i = 0; i < c.numel(); ++i) c.f32()[i] = rng.uniform(-amp, amp);
  return c.to(DType::BF16).to(kGpu);
}

double time_ms(const std::function<void()>& fn, int warmup = 5, int iters = 50) {
  return bench::time_ms(kGpu, fn, warmup, iters);
}

void run_case(const char* shape, const char* proj, int64_t in, int64_t out, int64_t rows, int64_t adapters, int64_t r) {
  ops::LoraRows t;
  for (int64_t j = 0; j < adapters; ++j) {
    t.a.push_back(random_gpu({r, in}, 10 + j, 0.05f));
    t.b.push_back(random_gpu({out, r}, 1000 + j, 0.05f));
    t.scale.push_back(2.0f);
  }
  // Row i belongs to adapter i * adapters / rows: contiguous runs, so the per-adapter road can
  // take each adapter's rows as one slice (no gather).
  std::vector<int32_t> idx(rows);
  std::vector<int64_t> first(adapters + 1, rows);
  for (int64_t i = rows - 1; i >= 0; --i) first[idx[i] = static_cast<int32_t>(i * adapters / rows)] = i;
  t.rows = Tensor::from_ints(idx, kGpu);
  const Tensor x = random_gpu({rows, in}, 1, 1.0f);
  Tensor y = random_gpu({rows, out}, 2, 1.0f);
  const double rows_ms = time_ms([&] { ops::lora_rows_(y, x, t); });
  const double gemm_ms = time_ms([&] {
    for (int64_t j = 0; j < adapters; ++j) {
      const int64_t end = j + 1 < adapters ? first[j + 1] : rows;
      if (first[j] >= end) continue;
      Tensor h, y_seg = y.slice_rows(first[j], end);
      ops::matmul_nt(x.slice_rows(first[j], end), t.a[j], h);
      ops::matmul_nt(h, t.b[j], y_seg, t.scale[j], 1.0f);
    }
  });
  std::vector<ops::LoraRun> runs;
  for (int64_t j = 0; j < adapters; ++j) {
    const int64_t end = j + 1 < adapters ? first[j + 1] : rows;
    if (first[j] < end) runs.push_back({first[j], end, static_cast<int32_t>(j)});
  }
  const double runs_ms = time_ms([&] { ops::lora_runs_(y, x, t, runs); });
  const double bytes = 2.0 * (adapters * r * (in + out) + rows * (in + 2 * out));
  std::printf("%-6s %-5s in %5lld out %5lld  rows %4lld adapters %3lld  lora_rows_ %8.4f ms (%6.0f GB/s)  "
              "GEMM pairs %8.4f ms  lora_runs_ %8.4f ms\n",
              shape, proj, static_cast<long long>(in), static_cast<long long>(out), static_cast<long long>(rows),
              static_cast<long long>(adapters), rows_ms, bytes / rows_ms * 1e-6, gemm_ms, runs_ms);
}

}  // namespace

int main(int argc, char** argv) {
  if (cuda_device_count() == 0) {
    std::fprintf(stderr, "bench_lora_rows: no CUDA GPU\n");
    return 2;
  }
  int64_t r = 16;
  std::vector<int64_t> row_counts = {1, 16, 64}, adapter_counts = {1, 8, 64};
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--rank") == 0) r = std::atoll(argv[i + 1]);
    else if (std::strcmp(argv[i], "--rows") == 0) row_counts = bench::parse_list(argv[i + 1]);
    else if (std::strcmp(argv[i], "--adapters") == 0) adapter_counts = bench::parse_list(argv[i + 1]);
  }
  struct Proj {
    const char *shape, *name;
    int64_t in, out;
  };
  const std::vector<Proj> projs = {{"qwen", "q", 896, 896},     {"qwen", "up", 896, 4864},
                                   {"qwen", "down", 4864, 896}, {"llama8", "q", 4096, 4096},
                                   {"llama8", "up", 4096, 14336}, {"llama8", "down", 14336, 4096}};
  for (const Proj& p : projs)
    for (int64_t rows : row_counts)
      for (int64_t adapters : adapter_counts)
        if (adapters <= rows) run_case(p.shape, p.name, p.in, p.out, rows, adapters, r);
  return 0;
}
#else
#include <cstdio>
int main() {
  std::fprintf(stderr, "bench_lora_rows: built without CUDA\n");
  return 2;
}
#endif
