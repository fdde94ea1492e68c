// Mixed-adapter decoding (infer::BatchDecoder on the GPU): output tokens/s of a batch whose
// sequences spread over 1, 8 or 64 random r=16 all-linear adapters (and the base model alone),
// once mixed in one forward per round (segmented LoRA, ops::lora_rows_, adapters paged into the
// decoder's GPU cache) and once grouped by adapter (one forward per adapter and round, each
// sequence's own LoraHook: what a round did before mixing), and with one adapter also "merged":
// the decoder's merged copy of the model (BatchDecoder's merged_adapters, `serve --merged-adapters`)
// runs every round with the adapter in the weights. Random-weight models of the
// Qwen2.5-0.5B and Llama-3-8B shapes, bf16, greedy (argmax on the GPU), no eos; decode_tok_s
// covers the decode rounds only, prefill_s the first step (the prompts' prefill, with each
// adapter's first copy to the GPU: a new decoder starts with an empty adapter cache),
// warm_prefill_s the same prompts again as new sequences afterwards (the adapters resident). One
// JSON line per row.
//   bench_mixed_decode_gpu [--only tiny,qwen0.5b,llama8b] [--batch 64] [--adapters 0,1,8,64] [--new 64]
//                          [--prompt 128] [--rank 16] [--modes mixed,grouped,merged] [--device cuda:0]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "bench_shapes.h"
#include "bench_util.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/infer/batch_decoder.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/random_model.h"
#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

using namespace lowrank;

namespace {


// A trained-looking adapter (B random, not PEFT's zeros), kept in host memory as the server does.
std::shared_ptr<lora::Adapter> random_adapter(model::Model& m, int64_t r, uint64_t seed) {
  lora::LoraConfig c;
  c.r = r;
  c.alpha = 2.0 * static_cast<double>(r);
  c.all_linear = true;
  Rng rng(seed);
  auto a = std::make_shared<lora::Adapter>(lora::Adapter::create(m, c, rng));
  a->to(Device::cpu());
  for (lora::LoraPair& p : a->pairs)
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = rng.uniform(-0.01f, 0.01f);
  return a;
}

void sync(Device d) {
#ifdef LOWRANK_WITH_CUDA
  if (d.is_cuda()) cuda::synchronize(d);
#endif
}

struct Timing {
  double prefill_s = 0;       // the first step: prefill and the adapters' first copies
  double warm_prefill_s = 0;  // the same prefill with the adapters resident
  double decode_s = 0;   // `rounds` decode rounds
};

// Seconds of the prefill and of `rounds` decode rounds of `batch` sequences; sequence b uses
// adapter b % adapters (none when adapters == 0), mixed or through per-adapter hooks.
Timing decode_seconds(const model::Model& m, const std::vector<std::shared_ptr<lora::Adapter>>& host,
                      const std::vector<std::shared_ptr<lora::Adapter>>& device_copies, int64_t batch,
                      int64_t adapters, bool mixed, bool merged, int64_t prompt, int64_t rounds, int64_t vocab) {
  infer::PagedKVCache cache(m.config(), m.device(), m.weights().embed.dtype(),
                            2 * batch * ((prompt + rounds + 15) / 16 + 1));
  // merged: the copy made at the first batch (merge_after_steps 0; the server waits 16 steps alone).
  infer::BatchDecoder decoder(m, cache, static_cast<size_t>(std::max<int64_t>(adapters, 1)), true, merged ? 1 : 0, 0);
  std::vector<std::unique_ptr<lora::LoraHook>> hooks;
  for (int64_t j = 0; j < adapters && !mixed; ++j)
    hooks.push_back(std::make_unique<lora::LoraHook>(std::vector<lora::ActiveAdapter>{{device_copies[j].get(), 1.0}}));
  std::vector<std::unique_ptr<infer::PagedSequence>> seqs;
  std::vector<std::vector<int32_t>> fed(batch);
  Rng rng(7);
  for (int64_t b = 0; b < batch; ++b) {
    seqs.push_back(std::make_unique<infer::PagedSequence>(cache, prompt + rounds + 1));
    for (int64_t t = 0; t < prompt; ++t) fed[b].push_back(static_cast<int32_t>(rng.next_u32() % vocab));
  }
  auto step = [&](bool first, bool last) {
    std::vector<infer::DecodeEntry> entries(batch);
    for (int64_t b = 0; b < batch; ++b) {
      infer::DecodeEntry& e = entries[b];
      e.seq = seqs[b].get();
      e.tokens = first ? std::span<const int32_t>(fed[b]) : std::span<const int32_t>(&fed[b].back(), 1);
      e.argmax_only = true;
      e.feeds_argmax = !last;  // the next round feeds it back (the decoder may start it early)
      if (adapters > 0) {
        if (mixed) e.adapter = host[b % adapters];
        else e.hook = hooks[b % adapters].get();
      }
    }
    decoder.step(entries);
    for (int64_t b = 0; b < batch; ++b) {
      if (!entries[b].error.empty()) throw Error(entries[b].error);
      fed[b].push_back(entries[b].argmax);
    }
  };
  auto seconds_since = [](auto t) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(); };
  Timing timing;
  sync(m.device());
  const auto p0 = std::chrono::steady_clock::now();
  step(true, false);  // prefill (and the adapters' first copies to the GPU)
  sync(m.device());
  timing.prefill_s = seconds_since(p0);
  step(false, false);
  sync(m.device());
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < rounds; ++i) step(false, i + 1 == rounds);
  sync(m.device());
  timing.decode_s = seconds_since(t0);
  seqs.clear();  // their blocks go back to the pool: the same prompts again, adapters resident
  for (int64_t b = 0; b < batch; ++b) {
    seqs.push_back(std::make_unique<infer::PagedSequence>(cache, prompt + rounds + 1));
    fed[b].resize(prompt);
  }
  const auto w0 = std::chrono::steady_clock::now();
  step(true, true);
  sync(m.device());
  timing.warm_prefill_s = seconds_since(w0);
  return timing;
}

}  // namespace

int main(int argc, char** argv) {
  std::string only, device_text = "cuda:0", modes = "mixed,grouped,merged";
  std::vector<int64_t> adapter_counts = {0, 1, 8, 64};
  int64_t batch = 64, rounds = 64, prompt = 128, rank = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--adapters")) adapter_counts = bench::parse_list(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch")) batch = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--new")) rounds = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--prompt")) prompt = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rank")) rank = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--device")) device_text = argv[i + 1];
    else if (!std::strcmp(argv[i], "--modes")) modes = argv[i + 1];
    else {
      std::fprintf(stderr, "error: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  try {
    const Device dev = parse_device(device_text);
    check_device(dev, "--device " + device_text);
    for (const std::string name : {"tiny", "qwen0.5b", "llama8b"}) {
      // tiny (a smoke test, CPU-sized) runs only when named.
      if (only.empty() ? name == "tiny" : only.find(name) == std::string::npos) continue;
      const bench::BenchShape& s = *bench::find_shape(name);
      model::Model m = model::random_model(bench::shape_config(s, 4096), 1, dev, dev.is_cuda() ? DType::BF16 : DType::F32);
      int64_t most = 0;
      for (int64_t a : adapter_counts) most = std::max(most, a);
      std::vector<std::shared_ptr<lora::Adapter>> host, device_copies;
      for (int64_t j = 0; j < most; ++j) {
        host.push_back(random_adapter(m, rank, 100 + j));
        device_copies.push_back(std::make_shared<lora::Adapter>(*host.back()));
        device_copies.back()->to(dev);
      }
      for (int64_t adapters : adapter_counts) {
        for (const std::string mode : {"mixed", "grouped", "merged"}) {
          if (adapters == 0 && mode != "mixed") continue;  // the base model: one row
          if (adapters > 1 && mode == "merged") continue;  // a batch of several adapters never merges
          if (modes.find(mode) == std::string::npos) continue;
          const Timing t = decode_seconds(m, host, device_copies, batch, adapters, mode != "grouped",
                                             mode == "merged", prompt, rounds, s.vocab);
          nlohmann::json row{{"bench", "mixed_decode_gpu"}, {"shape", s.name}, {"batch", batch},
                             {"adapters", adapters}, {"rank", rank}, {"mode", mode},
                             {"rounds", rounds}, {"prompt", prompt}, {"seconds", t.decode_s},
                             {"decode_tok_s", static_cast<double>(batch * rounds) / t.decode_s},
                             {"prefill_s", t.prefill_s}, {"warm_prefill_s", t.warm_prefill_s}};
#ifdef LOWRANK_WITH_CUDA
          if (dev.is_cuda()) row["device"] = cuda::device_description(dev);
#endif
          std::printf("%s\n", row.dump().c_str());
          std::fflush(stdout);
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
