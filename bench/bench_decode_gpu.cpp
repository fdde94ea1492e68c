// Batched KV-cached decoding on the GPU (infer::generate_batch over the paged KV cache): output
// tokens/s for batch 1, 16 and 64 on random-weight models of the Qwen2.5-0.5B and Llama-3-8B
// shapes, bf16, 128-token prompts, greedy, no eos (every sequence runs max-new-tokens). The time
// covers prefill + decode + host sampling; the model is made before the clock starts. One JSON
// line per row on stdout (tok/s also counts the prefill's time; decode_tok_s leaves it out;
// steady_tok_s counts from the 4th step on, when a decoder's steps replay recorded graphs: what a
// running server's steps take).
//   bench_decode_gpu [--only qwen0.5b,llama8b] [--batches 1,16,64] [--new 128] [--prompt 128] [--device cuda:0]
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_shapes.h"
#include "bench_util.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/infer/batch_generator.h"
#include "lowrank/model/random_model.h"
#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

using namespace lowrank;

namespace {


double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string only, device_text = "cuda:0";
  std::vector<int64_t> batches = {1, 16, 64};
  int64_t new_tokens = 128, prompt_len = 128;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--batches")) batches = bench::parse_list(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--new")) new_tokens = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt")) prompt_len = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--device")) device_text = argv[i + 1];
    else {
      std::fprintf(stderr, "error: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  try {
    const Device dev = parse_device(device_text);
    check_device(dev, "--device " + device_text);
    for (const std::string name : {"qwen0.5b", "llama8b"}) {
      if (!only.empty() && only.find(name) == std::string::npos) continue;
      const bench::BenchShape& s = *bench::find_shape(name);
      const model::ModelConfig cfg = bench::shape_config(s, 4096);
      model::Model m = model::random_model(cfg, 1, dev, dev.is_cuda() ? DType::BF16 : DType::F32);
      infer::GenerateOptions o;
      o.max_new_tokens = new_tokens;
      o.sampling.greedy = true;  // no eos ids: every sequence generates new_tokens
      for (int64_t batch : batches) {
        Rng rng(7);
        std::vector<std::vector<int32_t>> prompts(batch);
        for (auto& p : prompts)
          for (int64_t t = 0; t < prompt_len; ++t) p.push_back(static_cast<int32_t>(rng.next_u32() % s.vocab));
        infer::BatchOptions b;
        b.max_batch = batch;
        // Warm-up (allocator, cuBLASLt autotuning, cuDNN graphs) on a short run of the same batch.
        infer::GenerateOptions warm = o;
        warm.max_new_tokens = 4;
        infer::generate_batch(m, nullptr, prompts, warm, b);
        auto t0 = std::chrono::steady_clock::now();
        std::vector<double> arrivals;  // seconds since t0 of each output token
        b.on_token = [&](size_t, int32_t) { arrivals.push_back(seconds_since(t0)); };
        auto out = infer::generate_batch(m, nullptr, prompts, o, b);
#ifdef LOWRANK_WITH_CUDA
        if (dev.is_cuda()) cuda::synchronize(dev);
#endif
        const double secs = seconds_since(t0);
        int64_t tokens = 0;
        for (const auto& v : out) tokens += static_cast<int64_t>(v.size());
        const double first_token_s = arrivals.empty() ? 0.0 : arrivals.front();
        // Steady state: from the batch's kWarmSteps-th step on, once the step's graph replays (the
        // first decode step of a new decoder runs op by op, the second records its graph).
        constexpr int64_t kWarmSteps = 4;
        const int64_t warm_tokens = kWarmSteps * batch, n = static_cast<int64_t>(arrivals.size());
        const double steady_tok_s =
            n > warm_tokens ? (n - warm_tokens) / std::max(1e-9, arrivals.back() - arrivals[warm_tokens - 1]) : 0.0;
        nlohmann::json row{{"bench", "decode_gpu"}, {"shape", s.name}, {"batch", batch}, {"prompt", prompt_len},
                           {"new_tokens", new_tokens}, {"output_tokens", tokens}, {"seconds", secs},
                           {"tok_s", tokens / secs},
                           {"decode_tok_s", (tokens - batch) / std::max(1e-9, secs - first_token_s)},
                           {"prefill_s", first_token_s}, {"steady_tok_s", steady_tok_s}};
        for (const char* knob : {"LOWRANK_CUDA_GRAPHS", "LOWRANK_FUSED_DECODE"})  // A/B switches, when set
          if (const char* v = std::getenv(knob)) row[knob] = v;
#ifdef LOWRANK_WITH_CUDA
        if (dev.is_cuda()) row["device"] = cuda::device_description(dev);
#endif
        std::printf("%s\n", row.dump().c_str());
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
