// lowrank's side of the GPU LoRA training benchmark (issue 6): random-init models with the shapes
// of Qwen2.5-0.5B, Llama-3.2-1B and Llama-3-8B, bf16, LoRA r=16 (all-linear, and q,v). Prints one
// "RESULT {json}" line per configuration: tokens/s, peak GPU memory, MFU (4·N + attention FLOPs
// per token over 989 TFLOP/s), as bench/peft_baseline.py does for PEFT in the same run.
//   bench_train_gpu [--only qwen0.5b,llama1b,llama8b] [--targets all|all-linear|q_proj,v_proj]
//                   [--checkpointing all|0|1] [--steps 10] [--warmup 3] [--device cuda:0]
//                   [--batch-scale K]   (K times the shape's batch: how step time grows with work)
//                   [--quantize none|nf4]  (QLoRA: the blocks' projections in NF4, dequantized to bf16
//                                           per GEMM; quantized on the host while the model is made)
//                   [--dropout 0]  (LoRA dropout; lowrank train's default is 0.05)
//                   [--dropout-masks per-projection|per-input]  (a mask per projection, as PEFT, or one
//                                           per distinct input: lowrank train --dropout-per-input)
//                   [--method lora|full|all] [--rank 16[,4,...]]  (issue 15's efficiency claims: full
//                                           fine-tuning — every weight, f32 masters and AdamW moments,
//                                           bf16 working weights, as `lowrank train --full` — next to
//                                           LoRA of each rank; alpha = 2r)
// Shapes (bench_shapes.h): qwen0.5b, llama1b, llama8b, llama70b, and the experiments' bases base7m
// (models/base) and base120m (scripts/base-model/pretrain_lowrank.sh). On --device cpu the model
// is f32 (the CPU trains in f32) and no GPU memory is reported; peak_rss_mib (every row) is the
// process's peak resident memory so far, so run one configuration per process to compare it.
// QLoRA rows (issue 11): --only llama8b --targets all-linear --checkpointing 1 --quantize nf4, and
// the Llama-3-70B shape, which only fits one H200 quantized:
//   --only llama70b --targets all-linear --checkpointing 1 --quantize nf4 --steps 3 --warmup 1
// Peak memory is the allocator's peak reserved bytes for that configuration (the cache is emptied
// and the peaks reset before each). LOWRANK_PROFILE=1 adds a per-category profile of two extra
// steps to stderr (run op by op; the timed steps replay the step graph either way).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <nlohmann/json.hpp>

#include "bench_shapes.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/lora/k_extension.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/random_model.h"
#include "lowrank/ops/profile.h"
#include "lowrank/train/step.h"
#include "lowrank/train/step_graph.h"

#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

using namespace lowrank;

namespace {

using bench::BenchShape;
using bench::kShapes;

double flops_per_token(const model::ModelConfig& c, int64_t params, int64_t seq) {
  const double attn = 3.0 * 4.0 * c.num_layers * seq * c.hidden_size / 2.0;  // causal QKᵀ and PV, fwd + bwd
  return 4.0 * params + attn;
}

// rank 0: full fine-tuning (every weight); otherwise LoRA of that rank (alpha 2r) on the targets.
void run(BenchShape s, bool all_linear, int rank, bool checkpointing, Device dev, int steps, int warmup,
         int batch_scale, model::Quantization quantize, double dropout, bool per_input) {
  const bool full = rank == 0;
  s.batch *= batch_scale;
  const model::ModelConfig cfg = bench::shape_config(s, 4096);
#ifdef LOWRANK_WITH_CUDA
  if (dev.is_cuda()) {  // each configuration's peak is its own
    cuda::empty_cache(dev);
    cuda::reset_peak_stats(dev);
  }
#endif
  const auto t_make = std::chrono::steady_clock::now();
  model::Model m = model::random_model(cfg, 1, dev, dev.is_cuda() ? DType::BF16 : DType::F32, quantize);
  const double make_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_make).count();
  lora::LoraConfig lc;
  lc.r = full ? 1 : rank;
  lc.alpha = 2.0 * lc.r;
  lc.dropout = dropout;
  lc.dropout_per_input = per_input;
  lc.all_linear = all_linear;
  lc.target_modules = {"q_proj", "v_proj"};
  Rng rng(2);
  // As lowrank train sets either up (train/trainer.cpp): LoRA A/B f32 with bf16 working copies and
  // the frozen weights; or, with --full, gradients shaped like the weights and f32 masters.
  std::optional<lora::Adapter> a;
  std::optional<lora::LoraHook> hook;
  model::ModelWeights full_grads;
  std::vector<train::ParamRef> params;
  Rng drop_rng(5);
  if (full) {
    full_grads = model::zeros_like(m.weights());
    params = train::full_params(m, full_grads);
  } else {
    a.emplace(lora::Adapter::create(m, lc, rng));
    a->allocate_grads();
    a->make_working_copies(m.weights().embed.dtype());
    lora::make_extended_weights(*a, m);
    hook.emplace(std::vector<lora::ActiveAdapter>{{&*a, 1.0}});
    hook->set_training(true, &drop_rng);
    params = train::lora_params(*a);
  }
  train::AdamW opt({1e-4, 0.9, 0.999, 1e-8, 0.0});
  // As lowrank train: the step's passes replayed as a CUDA graph from the second step on
  // (LOWRANK_STEP_GRAPH=0: op by op).
  std::optional<train::StepGraph> graph;
  if (train::StepGraph::enabled(dev)) graph.emplace(dev);
  train::StepContext ctx{&m,   hook ? &*hook : nullptr, full ? &full_grads : nullptr, &params, &opt, 1.0,
                         checkpointing, graph ? &*graph : nullptr};
  std::vector<train::Example> ex;
  Rng tok(3);
  for (int64_t b = 0; b < s.batch; ++b) {
    train::Example e;
    for (int64_t t = 0; t < s.seq; ++t) e.ids.push_back(static_cast<int32_t>(tok.below(s.vocab)));
    e.labels = e.ids;
    ex.push_back(e);
  }
  auto data = train::Dataset::from_examples(ex);
  std::vector<int64_t> all;
  for (int64_t i = 0; i < s.batch; ++i) all.push_back(i);
  auto mb = train::make_micro_batch(data, all);
  double loss = 0, issue_s = 0;
  auto t0 = std::chrono::steady_clock::now();
  const int64_t counted = train::counted_targets({mb});
  for (int i = 0; i < warmup + steps; ++i) {
    if (i == warmup) {
#ifdef LOWRANK_WITH_CUDA
      if (dev.is_cuda()) cuda::synchronize(dev);
#endif
      t0 = std::chrono::steady_clock::now();
      issue_s = 0;
    }
    // train_step in two halves: the host time to queue the forward and backward (no sync inside)
    // against the whole step says whether the GPU waits for the host (launch-bound) or not.
    const auto q0 = std::chrono::steady_clock::now();
    Tensor nll;
    train::accumulate_gradients(ctx, {mb}, counted, nll);
    issue_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - q0).count();
    loss = train::apply_gradients(ctx, nll, counted, 1e-4).loss;  // reads the loss and grad norm back: one sync
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  // Peak reserved (what the allocator took from cudaMalloc): torch.cuda.max_memory_reserved's
  // definition, the one bench/peft_baseline.py reports; allocated peak for reference. Read before
  // the profiled steps: run op by op next to the step graph's pool, they take memory of their own.
  double peak_gib = 0, peak_allocated_gib = 0;
#ifdef LOWRANK_WITH_CUDA
  if (dev.is_cuda()) {
    const auto stats = cuda::allocator_stats(dev);
    peak_gib = static_cast<double>(stats.peak_reserved) / (1 << 30);
    peak_allocated_gib = static_cast<double>(stats.peak_in_use) / (1 << 30);
  }
#endif
  const bool graphed = graph && graph->recorded();
  if (profile::enabled()) {  // LOWRANK_PROFILE=1: two more steps, profiled (not in the timing above)
    for (int i = 0; i < 2; ++i) {
      profile::begin_step(dev);
      train::train_step(ctx, {mb}, 1e-4);
      profile::end_step();
    }
    std::fprintf(stderr, "%s %s checkpointing=%d\n%s", s.name,
                 full ? "full" : all_linear ? "all-linear" : "q_proj,v_proj", int(checkpointing),
                 profile::report().c_str());
    profile::reset();
  }
  const double tps = s.batch * s.seq / dt;
  const int64_t n = m.parameter_count();
  int64_t trainable = 0;
  for (const auto& p : params) trainable += p.param.numel();
  nlohmann::json r{{"engine", "lowrank"}, {"model", s.name}, {"method", full ? "full" : "lora"},
                   {"rank", full ? nlohmann::json() : nlohmann::json(rank)},
                   {"targets", full ? "all" : all_linear ? "all-linear" : "q_proj,v_proj"},
                   {"device", dev.is_cuda() ? "cuda" : "cpu"},
                   {"checkpointing", checkpointing}, {"compile", false}, {"dropout", full ? 0.0 : dropout},
                   {"dropout_masks", per_input ? "per-input" : "per-projection"},
                   {"quantize", quantize == model::Quantization::Nf4 ? "nf4" : "none"}, {"model_make_s", make_s},
                   {"step_s", dt},
                   {"batch", s.batch}, {"seq", s.seq}, {"tokens_per_s", tps}, {"params", n},
                   {"trainable", trainable}, {"loss", loss},
                   {"step_ms", dt * 1e3}, {"host_queue_ms", issue_s / steps * 1e3},
                   {"step_graph", graphed},
                   {"mfu", tps * flops_per_token(cfg, n, s.seq) / 989e12}};
  // The process's peak resident memory: one configuration per process (--only, --method, --rank,
  // --targets narrowed to one) makes it that configuration's; on the CPU it is the peak memory.
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  r["peak_rss_mib"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
  if (dev.is_cuda()) {
    r["peak_gib"] = peak_gib;
    r["peak_allocated_gib"] = peak_allocated_gib;
  }
  std::printf("RESULT %s\n", r.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string only = "qwen0.5b,llama1b,llama8b", device = "cuda:0", targets = "all", ckpt_filter = "all";
  std::string quantize = "none", method = "lora", ranks_arg = "16";
  int steps = 10, warmup = 3, batch_scale = 1;
  double dropout = 0.0;
  std::string masks = "per-projection";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--device")) device = argv[i + 1];
    else if (!std::strcmp(argv[i], "--targets")) targets = argv[i + 1];
    else if (!std::strcmp(argv[i], "--checkpointing")) ckpt_filter = argv[i + 1];
    else if (!std::strcmp(argv[i], "--quantize")) quantize = argv[i + 1];
    else if (!std::strcmp(argv[i], "--batch-scale")) batch_scale = std::max(1, std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--method")) method = argv[i + 1];
    else if (!std::strcmp(argv[i], "--rank")) ranks_arg = argv[i + 1];
    else if (!std::strcmp(argv[i], "--dropout")) dropout = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dropout-masks")) masks = argv[i + 1];
    else {
      std::fprintf(stderr, "error: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!(dropout >= 0.0 && dropout < 1.0)) {
    std::fprintf(stderr, "error: --dropout %g: expected a probability in [0, 1)\n", dropout);
    return 2;
  }
  if (masks != "per-projection" && masks != "per-input") {
    std::fprintf(stderr, "error: --dropout-masks %s: expected per-projection or per-input\n", masks.c_str());
    return 2;
  }
  if (method != "lora" && method != "full" && method != "all") {
    std::fprintf(stderr, "error: --method %s: expected lora, full or all\n", method.c_str());
    return 2;
  }
  std::vector<int> ranks;  // 0 stands for full fine-tuning
  if (method != "lora") ranks.push_back(0);
  if (method != "full") {
    std::stringstream ss(ranks_arg);
    for (std::string t; std::getline(ss, t, ',');) {
      const int r = std::atoi(t.c_str());
      if (r <= 0) {
        std::fprintf(stderr, "error: --rank %s: expected positive integers separated by commas\n", ranks_arg.c_str());
        return 2;
      }
      ranks.push_back(r);
    }
  }
  try {
    Device dev = parse_device(device);
    check_device(dev, "--device " + device);
    const model::Quantization q = model::parse_quantization(quantize);
    for (const auto& s : kShapes) {
      if (only.find(s.name) == std::string::npos) continue;
      for (int rank : ranks)
        for (bool all_linear : {true, false})
          for (bool ckpt : {false, true}) {
            const std::string name = s.name;
            if (rank == 0 && !all_linear) continue;  // full fine-tuning: once (targets do not apply)
            if (ckpt && name != "llama8b" && name != "llama70b") continue;  // as the PEFT baseline does
            if (rank != 0 && targets != "all" && targets != (all_linear ? "all-linear" : "q_proj,v_proj")) continue;
            if (ckpt_filter != "all" && ckpt_filter != (ckpt ? "1" : "0")) continue;
            try {
              run(s, all_linear, rank, ckpt, dev, steps, warmup, batch_scale, q, dropout, masks == "per-input");
            } catch (const std::exception& e) {  // e.g. out of memory: the row says so
              nlohmann::json r{{"engine", "lowrank"}, {"model", s.name}, {"method", rank == 0 ? "full" : "lora"},
                               {"rank", rank == 0 ? nlohmann::json() : nlohmann::json(rank)},
                               {"all_linear", all_linear}, {"checkpointing", ckpt}, {"quantize", quantize},
                               {"error", e.what()}};
              std::printf("RESULT %s\n", r.dump().c_str());
            }
          }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
