// LoRA training of a base split over GPUs by layers (pipeline parallel, issue 14): a random-init
// bf16 model of a Llama shape made directly on its stages' devices, LoRA r=16 all-linear, 1F1B (or
// GPipe) over the micro-batches of a step. Prints one "RESULT {json}" line: tokens/s, MFU, the split and
// the peak memory of every GPU (the allocator's peak reserved bytes).
//   bench_pipeline_gpu [--shape llama70b|llama8b|llama1b|tiny] [--devices cuda:0,cuda:1] [--batch 1]
//                      [--micro-batches 8] [--seq 2048] [--checkpointing 1] [--schedule 1f1b|gpipe]
//                      [--steps 3] [--warmup 1]
// --batch is sequences per micro-batch; a step is micro-batches × batch × seq tokens. With one
// device (--devices cuda:0) the same schedule runs unsplit, for comparison.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "bench_shapes.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/random_model.h"
#include "lowrank/train/pipeline.h"

#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

using namespace lowrank;

namespace {

struct Options {
  std::string shape = "llama70b", devices = "cuda:0,cuda:1";
  int64_t batch = 1, micro_batches = 8, seq = 2048;
  bool checkpointing = true;
  std::string schedule = "1f1b";
  int steps = 3, warmup = 1;
};

int run(const Options& o) {
  const train::PipelineSchedule schedule = train::parse_pipeline_schedule(o.schedule);
  const bench::BenchShape* s = bench::find_shape(o.shape);
  if (!s || s->qkv_bias) throw Error("--shape " + o.shape + ": expected tiny, llama1b, llama8b or llama70b");
  std::vector<Device> devices;
  std::stringstream list(o.devices);
  for (std::string d; std::getline(list, d, ',');) {
    devices.push_back(parse_device(d));
    check_device(devices.back(), "--devices " + d);
  }
  const auto cfg = bench::shape_config(*s, 8192);
  const DType dtype = devices[0].is_cuda() ? DType::BF16 : DType::F32;
  const model::Placement place = model::balance_layers(cfg, devices, dtype);
  auto t_build = std::chrono::steady_clock::now();
  model::Model m = model::random_model(cfg, 1, place, dtype);  // each layer made on its device
  lora::LoraConfig lc;
  lc.r = 16;
  lc.alpha = 32;
  lc.dropout = 0.0;
  lc.all_linear = true;
  Rng rng(2);
  lora::Adapter a = lora::Adapter::create(m, lc, rng);  // pairs placed next to their layers
  a.allocate_grads();
  a.make_working_copies(dtype);
  auto params = train::lora_params(a);
  train::AdamW opt({1e-4, 0.9, 0.999, 1e-8, 0.0});
  train::StepContext ctx{&m, nullptr, nullptr, &params, &opt, 1.0, o.checkpointing};
  const train::PipelineContext pipeline{&ctx,
                                        [&a]() -> std::unique_ptr<model::TrainableHook> {
                                          auto h = std::make_unique<lora::LoraHook>(
                                              std::vector<lora::ActiveAdapter>{{&a, 1.0}});
                                          h->set_training(true);
                                          return h;
                                        },
                                        schedule};
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();

  std::vector<train::MicroBatch> mbs;
  Rng tok(3);
  for (int64_t k = 0; k < o.micro_batches; ++k) {
    std::vector<train::Example> ex;
    for (int64_t b = 0; b < o.batch; ++b) {
      train::Example e;
      for (int64_t t = 0; t < o.seq; ++t) e.ids.push_back(static_cast<int32_t>(tok.below(s->vocab)));
      e.labels = e.ids;
      ex.push_back(std::move(e));
    }
    std::vector<int64_t> all;
    for (int64_t i = 0; i < o.batch; ++i) all.push_back(i);
    mbs.push_back(train::make_micro_batch(train::Dataset::from_examples(ex), all));
  }
#ifdef LOWRANK_WITH_CUDA
  for (Device d : devices)
    if (d.is_cuda()) cuda::reset_peak_stats(d);  // the step's memory, not the build's transients
#endif
  double loss = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.warmup + o.steps; ++i) {
    if (i == o.warmup) t0 = std::chrono::steady_clock::now();  // the step ends synchronized
    loss = train::train_step_pipeline(pipeline, mbs, 1e-4).loss;
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.steps;
  const double tokens = static_cast<double>(o.micro_batches * o.batch * o.seq);
  const double tps = tokens / dt;
  const int64_t n = m.parameter_count();
  // LoRA: forward 2N + input gradients 2N per token (+ 2N recomputed with checkpointing, not counted,
  // as bench_train_gpu does), plus causal attention.
  const double flops = 4.0 * n + 3.0 * 4.0 * cfg.num_layers * o.seq * cfg.hidden_size / 2.0;
  nlohmann::json r{{"engine", "lowrank"}, {"model", s->name}, {"targets", "all-linear"}, {"r", 16},
                   {"gpus", devices.size()}, {"split", devices.size() > 1 ? nlohmann::json("layers") : nlohmann::json(false)},
                   {"schedule", o.schedule}, {"checkpointing", o.checkpointing}, {"batch", o.batch},
                   {"micro_batches", o.micro_batches}, {"seq", o.seq}, {"tokens_per_s", tps},
                   {"step_s", dt}, {"params", n}, {"trainable", a.parameter_count()}, {"loss", loss},
                   {"mfu", tps * flops / (989e12 * devices.size())}, {"build_s", build_s},
                   {"first_layer", place.first_layer}};
  std::vector<double> peak;
#ifdef LOWRANK_WITH_CUDA
  for (Device d : devices)
    if (d.is_cuda()) peak.push_back(static_cast<double>(cuda::allocator_stats(d).peak_reserved) / (1 << 30));
#endif
  r["peak_gib"] = peak;
  std::printf("RESULT %s\n", r.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--shape") o.shape = v;
    else if (k == "--devices") o.devices = v;
    else if (k == "--batch") o.batch = std::atoll(v.c_str());
    else if (k == "--micro-batches") o.micro_batches = std::atoll(v.c_str());
    else if (k == "--seq") o.seq = std::atoll(v.c_str());
    else if (k == "--checkpointing") o.checkpointing = v != "0";
    else if (k == "--schedule") o.schedule = v;
    else if (k == "--steps") o.steps = std::atoi(v.c_str());
    else if (k == "--warmup") o.warmup = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "error: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "error: option %s needs a value\n", argv[argc - 1]);
    return 2;
  }
  if (o.batch < 1 || o.micro_batches < 1 || o.seq < 2 || o.steps < 1 || o.warmup < 0) {
    std::fprintf(stderr, "error: --batch, --micro-batches, --steps must be positive, --seq at least 2\n");
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {  // e.g. out of memory: a row that says so, as bench_train_gpu writes
    std::fprintf(stderr, "error: %s\n", e.what());
    nlohmann::json r{{"engine", "lowrank"}, {"model", o.shape}, {"devices", o.devices}, {"batch", o.batch},
                     {"micro_batches", o.micro_batches}, {"schedule", o.schedule},
                     {"checkpointing", o.checkpointing}, {"error", e.what()}};
    std::printf("RESULT %s\n", r.dump().c_str());
    return 2;
  }
}
