#include "lowrank/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/io/checkpoint_dir.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/k_extension.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/model/export.h"
#include "lowrank/ops/profile.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/train/data_parallel.h"
#include "lowrank/train/dataset.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/gradient_sum.h"
#include "lowrank/train/metrics.h"
#include "lowrank/train/pipeline.h"
#include "lowrank/train/progress.h"
#include "lowrank/train/step.h"
#include "lowrank/train/step_graph.h"
#include "lowrank/train/text_encoder.h"
#include "lowrank/train/weight_decay.h"

namespace lowrank::train {
namespace fs = std::filesystem;

namespace {

// --pad-to-multiple-of's default on a GPU: each new batch length costs cuDNN attention plans
// (~70-80 ms a direction on an H200) and GEMM tuning; 8 makes at most seq_len / 8 lengths.
constexpr int64_t kGpuPadMultiple = 8;

// What must not change between a run and its resumption.
nlohmann::json run_identity(const model::Model& m, const TrainOptions& o) {
  const auto& c = m.config();
  nlohmann::json id;
  id["model"] = {{"architecture", model::arch_name(c.arch)}, {"layers", c.num_layers}, {"hidden", c.hidden_size},
                 {"vocab", c.vocab_size}, {"parameters", m.parameter_count()}};
  id["full"] = o.full;
  if (o.packing) id["packing"] = true;  // other examples: the order of a resumed run would not match
  if (o.quantize != model::Quantization::None) id["quantize"] = "nf4";
  if (!o.full) {
    auto l = o.lora.to_json();
    id["lora"] = {{"r", l["r"]}, {"lora_alpha", l["lora_alpha"]}, {"target_modules", l["target_modules"]},
                  {"use_rslora", l["use_rslora"]}, {"bias", l["bias"]}, {"rank_pattern", l["rank_pattern"]},
                  {"use_dora", l["use_dora"]}, {"init", o.lora.init_name()}};
    // the masks' definition and the blocks (only when set: checkpoints from before them resume as
    // they were)
    if (o.lora.dropout_per_input) id["lora"]["dropout_per_input"] = true;
    if (!o.lora.modules_to_save.empty()) id["lora"]["modules_to_save"] = o.lora.modules_to_save;
    if (!o.lora.layers_to_transform.empty())
      id["lora"]["layers"] = {{"layers_to_transform", l["layers_to_transform"]}, {"layers_pattern", l["layers_pattern"]}};
  }
  return id;
}

void refuse_mismatch(const nlohmann::json& saved, const nlohmann::json& now, const std::string& ckpt) {
  auto refuse = [&](const std::string& key, const std::string& then, const std::string& here) {
    throw error("cannot resume from ", ckpt, ": it was trained with ", key, " = ", then, ", this run has ", here,
                " (use another --out folder, or the same settings)");
  };
  for (auto& [key, value] : now.items())
    if (!saved.contains(key) || saved[key] != value) refuse(key, saved.contains(key) ? saved[key].dump() : "(none)", value.dump());
  // Settings recorded only when not the default (packing, quantize): set then, unset now.
  if (saved.is_object())
    for (auto& [key, value] : saved.items())
      if (!now.contains(key)) refuse(key, value.dump(), "(none)");
}

// What a checkpoint's trainer_state.json says about where the run was, checked: the file is read
// back from disk, so a bad value must be an error naming it, not a crash later.
struct ResumePoint {
  int64_t step = 0, optimizer_steps = 0;
  uint64_t dropout_seed = 0, dropout_offset = 0;
};

ResumePoint read_resume_point(const nlohmann::json& state, const std::string& ckpt, int64_t total_steps) {
  auto bad = [&](const std::string& what) {
    return error("cannot resume from ", ckpt, ": trainer_state.json: ", what);
  };
  // j[key] as an integer in [0, most] (no bound when most is INT64_MAX); `name` for the message.
  auto count = [&](const nlohmann::json& j, const char* key, const std::string& name, int64_t most) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > most)
      throw bad("\"" + name + "\" must be " +
                (most == INT64_MAX ? std::string("an integer >= 0")
                                   : "an integer in [0, " + std::to_string(most) + "]") +
                ", got " + (it == j.end() ? std::string("nothing") : it->dump()));
    return it->get<int64_t>();
  };
  if (!state.is_object()) throw bad("not a JSON object");
  ResumePoint p;
  p.step = count(state, "step", "step", INT64_MAX);
  if (p.step > total_steps)
    throw error("cannot resume from ", ckpt, ": it is at step ", p.step, ", past --steps ", total_steps);
  p.optimizer_steps = count(state, "optimizer_steps", "optimizer_steps", p.step);
  auto rng = state.find("dropout_rng");
  if (rng == state.end() || !rng->is_object()) throw bad("\"dropout_rng\" must be an object");
  p.dropout_seed = static_cast<uint64_t>(count(*rng, "seed", "dropout_rng.seed", INT64_MAX));
  p.dropout_offset = static_cast<uint64_t>(count(*rng, "offset", "dropout_rng.offset", INT64_MAX));
  return p;
}

void validate(const TrainOptions& o) {
  if (o.batch_size <= 0) throw error("--batch-size must be positive");
  if (o.seq_len < 2) throw error("--seq-len must be at least 2");
  if (o.pad_to_multiple_of < 0 || o.pad_to_multiple_of > o.seq_len)
    throw error("--pad-to-multiple-of must be between 1 and --seq-len (", o.seq_len, "), got ", o.pad_to_multiple_of);
  if (o.grad_accum <= 0) throw error("--grad-accum must be positive");
  if (!(o.lr > 0) || !std::isfinite(o.lr)) throw error("--lr must be a positive number, got ", o.lr);
  if (o.steps < 0 || o.epochs < 0 || o.warmup < 0 || o.save_every < 0 || o.eval_every < 0 || o.save_total_limit < 0)
    throw error("--steps, --epochs, --warmup, --save-every, --save-total-limit and --eval-every must not be negative");
  if (o.steps > 0 && o.epochs > 0) throw error("give --steps or --epochs, not both");
  // An infinite decay multiplies every weight by -inf in the first step: an adapter of infinities.
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay))
    throw error("--weight-decay must be a finite number, not negative, got ", o.weight_decay);
  if (!(o.max_grad_norm >= 0)) throw error("--max-grad-norm must not be negative");
  o.loraplus.validate(o.full);
  if (!(o.adam_beta1 >= 0 && o.adam_beta1 < 1) || !(o.adam_beta2 >= 0 && o.adam_beta2 < 1))
    throw error("--adam-beta1 and --adam-beta2 must be in [0, 1), got ", o.adam_beta1, " and ", o.adam_beta2);
  if (!(o.adam_epsilon >= 0) || !std::isfinite(o.adam_epsilon))
    throw error("--adam-epsilon must be a finite number, not negative, got ", o.adam_epsilon);
  if (!(o.warmup_ratio >= 0 && o.warmup_ratio < 1))
    throw error("--warmup-ratio must be in [0, 1), got ", o.warmup_ratio);
  if (o.warmup > 0 && o.warmup_ratio > 0) throw error("give --warmup (steps) or --warmup-ratio, not both");
  if ((o.schedule == Schedule::CosineWithMinLr) != o.min_lr_rate.has_value())
    throw error(o.min_lr_rate ? "--min-lr-rate is the floor of --schedule cosine_with_min_lr; give that schedule"
                              : "--schedule cosine_with_min_lr needs --min-lr-rate (its floor, a fraction of --lr)");
  if (o.min_lr_rate && !(*o.min_lr_rate >= 0 && *o.min_lr_rate <= 1))
    throw error("--min-lr-rate must be between 0 and 1, got ", *o.min_lr_rate);
  if (o.full && o.quantize != model::Quantization::None)
    throw error("--full with --quantize nf4: quantized weights are frozen (QLoRA trains LoRA adapters on them); "
                "drop one of the two");
  for (const std::string& d : o.devices) check_device(parse_device(d), "--devices " + d);
  if (o.devices.empty()) check_device(parse_device(o.device), "--device " + o.device);
  if (!o.lora.modules_to_save.empty()) {
    if (o.full) throw error("--modules-to-save with --full: full fine-tuning trains every layer already");
    const bool cuda = std::any_of(o.devices.begin(), o.devices.end(), [](const std::string& d) { return parse_device(d).is_cuda(); }) ||
                      (o.devices.empty() && parse_device(o.device).is_cuda());
    if (cuda || !o.split.empty())
      throw error("--modules-to-save trains on the CPU (one or several --devices cpu,...), not yet on CUDA or with "
                  "--split layers");
  }
  if (!o.split.empty()) {
    if (o.split != "layers") throw error("--split ", o.split, ": the only split is \"layers\" (pipeline parallel)");
    if (o.devices.size() < 2) throw error("--split layers needs --devices with two or more devices (e.g. cuda:0,cuda:1)");
    if (o.full) throw error("--split layers trains LoRA adapters; --full is not supported with it");
    for (const std::string& d : o.devices)
      if (parse_device(d).is_cuda() != parse_device(o.devices[0]).is_cuda())
        throw error("--devices ", o.devices[0], ",", d, ": a split model is all on the CPU or all on GPUs");
  }
}

// One device's copy of everything a step touches (data parallel runs keep one per device; they
// stay identical because every rank applies the same summed gradients). Held by pointer: the hook
// and the step context point into it.
struct Replica {
  std::unique_ptr<model::Model> model;
  std::optional<lora::Adapter> adapter;
  model::ModelWeights full_grads;
  std::vector<ParamRef> params;
  std::optional<lora::LoraHook> hook;
  std::unique_ptr<AdamW> optimizer;
  Rng dropout_rng;
  std::unique_ptr<StepGraph> graph;  // CUDA: the step's passes as one graph (step_graph.h)
  std::unique_ptr<GradientSum> gradient_sum;  // data parallel: the sum over ranks (gradient_sum.h)
  StepContext ctx;
};

// Rank r's replica: the model on `device` and fresh parameters (the same seed on every rank, so
// every replica starts equal).
// With `stages` (--split layers), the model is split over them, each layer read onto its stage's
// device, and the adapter's pairs placed next to their layers.
std::unique_ptr<Replica> make_replica(const TrainOptions& o, Device device, int rank,
                                      const std::vector<Device>& stages = {}) {
  auto rep = std::make_unique<Replica>();
  // CUDA: bf16 weights (frozen for LoRA; with --full, working copies of f32 masters in AdamW).
  const DType dtype = device.is_cuda() ? DType::BF16 : DType::F32;
  rep->model = std::make_unique<model::Model>(stages.empty()
                                                  ? model::Model::load(o.model_dir, device, dtype, o.quantize)
                                                  : model::Model::load_split(o.model_dir, stages, dtype, o.quantize));
  model::Model& m = *rep->model;
  Rng init_rng(o.seed);
  if (o.full) {
    rep->full_grads = model::zeros_like(m.weights());
    rep->params = full_params(m, rep->full_grads);
    apply_decay_rule(rep->params, &m.weights());
  } else {
    lora::LoraConfig lc = o.lora;
    lc.base_model_name_or_path = fs::absolute(o.model_dir).lexically_normal().string();
    rep->adapter = lora::Adapter::create(m, lc, init_rng);
    rep->adapter->attach_biases(m);
    rep->adapter->attach_saved_modules(m);  // --modules-to-save: the model computes with the trained copies
    rep->adapter->allocate_grads();
    rep->adapter->make_working_copies(m.weights().embed.dtype());  // bf16 A/B for the GPU's GEMMs
    lora::make_extended_weights(*rep->adapter, m);                  // where the K-extension applies
    rep->params = lora_params(*rep->adapter);
    apply_decay_rule(rep->params);
    apply_loraplus(rep->params, o.loraplus, o.lr);
  }
  rep->optimizer =
      std::make_unique<AdamW>(AdamWConfig{o.lr, o.adam_beta1, o.adam_beta2, o.adam_epsilon, o.weight_decay});
  // Dropout masks: rank 0 draws the single-device stream; the others their own streams.
  rep->dropout_rng = Rng(o.seed ^ 0xd40d0u ^ (static_cast<uint64_t>(rank) * 0x9e3779b97f4a7c15ull));
  return rep;
}

// Puts the hook and step context together once the replica's parameters are final (after resume).
// `comm`: data parallel, this replica being local rank `rank` of it.
void arm_replica(Replica& rep, const TrainOptions& o, dist::Communicator* comm, int rank) {
  if (rep.adapter) {
    rep.hook.emplace(std::vector<lora::ActiveAdapter>{{&*rep.adapter, 1.0}});
    rep.hook->set_training(true, &rep.dropout_rng);
  }
  const Device device = rep.model->device();
  if (!rep.graph && StepGraph::enabled(device)) rep.graph = std::make_unique<StepGraph>(device);
  if (comm) rep.gradient_sum = std::make_unique<GradientSum>(*comm, rank, rep.params, rep.model->config().num_layers);
  rep.ctx = StepContext{rep.model.get(), rep.hook ? &*rep.hook : nullptr, o.full ? &rep.full_grads : nullptr,
                        &rep.params, rep.optimizer.get(), o.max_grad_norm, o.checkpointing, rep.graph.get(),
                        rep.gradient_sum.get()};
}

}  // namespace

TrainSummary run_training(const TrainOptions& o) {
  validate(o);
  if (!o.full) o.lora.validate("LoRA options");
  {  // the output folder first: a bad --out must fail before minutes of loading and training
    std::error_code ec;
    fs::create_directories(o.out_dir, ec);
    if (ec || !io::is_directory(o.out_dir))
      throw error("--out ", o.out_dir, ": cannot create the output folder (", ec ? ec.message() : "not a folder", ")");
  }
  auto t_start = std::chrono::steady_clock::now();
  // Ranks: one per device of --devices (threads of this process), or under a multi-process launch
  // (torchrun's WORLD_SIZE, RANK, LOCAL_RANK, ...) this process's one device of WORLD_SIZE.
  const std::optional<dist::LaunchEnv> launch = dist::launch_env_from_environment();
  if (launch && !o.devices.empty())
    throw error("--devices drives several GPUs from one process; under a multi-process launch (WORLD_SIZE=",
                launch->world_size, ") each process takes one --device");
  std::vector<Device> devices;  // this process's ranks, one per device
  for (const std::string& d : o.devices.empty() ? std::vector<std::string>{o.device} : o.devices)
    devices.push_back(parse_device(d));
  std::vector<Device> stages;  // --split layers: one rank whose model spans every device
  if (!o.split.empty()) {
    if (launch) throw error("--split layers runs in one process (WORLD_SIZE=", launch->world_size, " is set)");
    stages = devices;
    devices.resize(1);
  }
  if (launch && devices[0].is_cuda() && o.device == "cuda") devices[0] = Device::cuda(launch->local_rank);
  if (launch) check_device(devices[0], "LOCAL_RANK " + std::to_string(launch->local_rank));
  const int local_ranks = static_cast<int>(devices.size());
  const int ranks = launch ? launch->world_size : local_ranks;  // over every process
  const int first_rank = launch ? launch->rank : 0;             // this process's first rank
  const bool writer = first_rank == 0;  // rank 0's process: evaluation, metrics, checkpoints, the output
  if (o.batch_size % ranks != 0)
    throw error("--batch-size ", o.batch_size, " must be a multiple of the number of ranks (", ranks, ")");
  std::unique_ptr<dist::Communicator> comm = launch ? dist::make_process_communicator(*launch, devices[0])
                                             : local_ranks > 1 ? dist::make_communicator(devices)
                                                               : nullptr;
  // Parameters: a LoRA adapter (default) or every weight (--full), on every rank's replica.
  std::vector<std::unique_ptr<Replica>> replicas;
  for (int r = 0; r < local_ranks; ++r) replicas.push_back(make_replica(o, devices[r], first_rank + r, stages));
  if (!stages.empty()) {
    const model::Placement& place = replicas[0]->model->placement();
    std::string layout;
    for (int s = 0; s < place.stages(); ++s)
      layout += (s ? ", " : "") + place.devices[s].str() + " layers " + std::to_string(place.first_layer[s]) + "-" +
                std::to_string(place.first_layer[s + 1] - 1);
    log_info("split by layers: ", layout, " (embedding on the first, lm_head on the last)");
  }
  Replica& lead = *replicas[0];
  model::Model& m = *lead.model;
  std::optional<lora::Adapter>& adapter = lead.adapter;
  const auto& cfg = m.config();
  const int64_t seq_len = cfg.learned_positions ? std::min(o.seq_len, cfg.max_position_embeddings) : o.seq_len;
  const std::optional<std::string> chat_template =
      o.chat_template.empty() ? std::nullopt : std::optional(tok::chat_template_from_flag(o.chat_template));
  auto encoder = make_text_encoder(o.model_dir, chat_template);
  DatasetOptions dopt{seq_len, cfg.vocab_size, encoder ? &*encoder : nullptr};
  dopt.pack = o.packing;
  Dataset data = Dataset::load(o.data_path, dopt);
  std::optional<Dataset> eval_data;
  if (!o.eval_data.empty()) {  // whole examples, scored in --seq-len windows as `lowrank eval --seq-len` does
    DatasetOptions eopt = dopt;
    eopt.truncate = false;
    eopt.pack = false;  // eval losses stay comparable with and without packing
    eval_data = Dataset::load(o.eval_data, eopt);
  }

  const int64_t per_step = o.batch_size * o.grad_accum;
  const int64_t steps_per_epoch = std::max<int64_t>(1, (data.size() + per_step - 1) / per_step);
  const int64_t total_steps = o.steps > 0 ? o.steps : steps_per_epoch * std::max<int64_t>(1, o.epochs);

  const int64_t total_params = m.parameter_count();
  const int64_t trainable = o.full ? total_params : adapter->parameter_count();
  int64_t lora_weights = 0;  // PEFT counts the LoRA tensors on top of the base; trained biases are base weights
  if (adapter) {
    lora_weights = adapter->parameter_count();
    for (const auto& b : adapter->biases) lora_weights -= b.value.numel();
  }
  const int64_t all_params = total_params + lora_weights;
  std::fprintf(stderr, "trainable params: %lld || all params: %lld || trainable%%: %.4f\n",
               static_cast<long long>(trainable), static_cast<long long>(all_params),
               100.0 * static_cast<double>(trainable) / static_cast<double>(all_params));

  AdamW& optimizer = *lead.optimizer;
  std::vector<ParamRef>& params = lead.params;
  Rng& dropout_rng = lead.dropout_rng;
  ScheduleConfig sched{o.schedule, o.lr, warmup_steps_for(o.warmup, o.warmup_ratio, total_steps), total_steps,
                       o.min_lr_rate.value_or(0)};
  const nlohmann::json identity = run_identity(m, o);

  // Resume from the newest complete checkpoint.
  fs::create_directories(o.out_dir);
  if (writer) io::cleanup_stale_tmp(o.out_dir);
  int64_t start_step = 0;
  if (o.resume) {
    if (auto ckpt = io::latest_checkpoint(o.out_dir)) {
      auto state = io::read_json((fs::path(*ckpt) / "trainer_state.json").string());
      const ResumePoint point = read_resume_point(state, *ckpt, total_steps);
      refuse_mismatch(state.value("identity", nlohmann::json()), identity, *ckpt);
      start_step = point.step;
      auto weights = io::SafetensorsFile::open((fs::path(*ckpt) / "weights.safetensors").string());
      auto opt = io::SafetensorsFile::open((fs::path(*ckpt) / "optimizer.safetensors").string());
      std::map<std::string, Tensor> moments;
      for (const auto& info : opt.tensors()) moments[info.name] = opt.get(info.name);
      for (auto& rep : replicas) {  // every rank from the same checkpoint: any number of devices resumes it
        for (auto& p : rep->params) {
          if (!weights.contains(p.name)) throw error(*ckpt, ": checkpoint lacks tensor \"", p.name, "\"");
          Tensor t = weights.get(p.name);
          if (t.shape() != p.param.shape())
            throw error(*ckpt, ": tensor \"", p.name, "\" has shape ", shape_str(t.shape()), ", expected ",
                        shape_str(p.param.shape()));
          Tensor host = t.to(DType::F32);
          device_copy(p.param.raw(), p.param.device(), host.raw(), Device::cpu(), p.param.nbytes());
        }
        refresh_working_copies(rep->params);  // --full on the GPU: the bf16 weights from the loaded masters
        rep->optimizer->load_state(moments, point.optimizer_steps);
        rep->optimizer->check_params(rep->params);
      }
      dropout_rng = Rng(point.dropout_seed, point.dropout_offset);
      log_info("resuming from ", *ckpt, " at step ", start_step);
    } else {
      log_warn("--resume: no complete checkpoint in ", o.out_dir, "; starting from step 0");
    }
  }
  for (int r = 0; r < local_ranks; ++r) arm_replica(*replicas[r], o, comm.get(), r);
  std::optional<lora::LoraHook>& hook = lead.hook;
  // Metrics: drop lines a killed run wrote after its last checkpoint, then append.
  const std::string metrics_path = (fs::path(o.out_dir) / "metrics.jsonl").string();
  MetricsWriter metrics;  // rank 0 only
  if (writer) {
    if (start_step == 0) {
      std::error_code ec;
      fs::remove(metrics_path, ec);
    } else if (io::file_exists(metrics_path)) {
      std::string kept;
      for (const auto& rec : read_metrics(metrics_path))
        if (rec.value("step", int64_t{0}) <= start_step) kept += rec.dump() + "\n";
      io::write_file_atomic(metrics_path, kept);
    }
    metrics.open(metrics_path);
  }

  std::vector<StepContext*> contexts;
  for (auto& rep : replicas) contexts.push_back(&rep->ctx);
  // --split layers: a hook per micro-batch in flight, all training the one adapter with one dropout stream.
  const PipelineContext pipeline{&lead.ctx, [&lead]() -> std::unique_ptr<model::TrainableHook> {
                                   auto h = std::make_unique<lora::LoraHook>(
                                       std::vector<lora::ActiveAdapter>{{&*lead.adapter, 1.0}});
                                   h->set_training(true, &lead.dropout_rng);
                                   return h;
                                 }};
  TrainSummary summary;
  summary.wrote_output = writer;
  summary.trainable = trainable;
  summary.total_parameters = all_params;
  auto run_eval = [&](int64_t step, const char* when) -> std::optional<double> {
    if (!eval_data || !writer) return std::nullopt;
    if (hook) hook->set_training(false);
    auto r = evaluate_examples(m, *eval_data, hook ? &*hook : nullptr, seq_len);
    if (hook) hook->set_training(true, &dropout_rng);
    metrics.write({{"step", step}, {"eval_loss", r.loss}, {"eval_perplexity", r.perplexity}, {"eval_tokens", r.tokens},
                   {"when", when}});
    return r.loss;
  };
  if (start_step == 0) summary.eval_loss_before = run_eval(0, "before");

  ExampleOrder order(data.size(), o.seed);
  ProgressOptions popt;
  popt.quiet = o.quiet || !writer;
  ProgressBar bar(total_steps, popt, start_step);
  const char* kill_after = std::getenv("LOWRANK_TEST_KILL_AFTER_STEP");  // crash-safety tests only
  int64_t tokens_total = 0;
  // LOWRANK_PROFILE=1: steps 2-4 of this run (after the warm-up step) are profiled and reported once.
  constexpr int64_t kProfileSteps = 3;
  // The profiled steps run op by op: right after the first (warm-up) step, before the step graph
  // is recorded, so that its pool takes over their cached blocks instead of adding its own.
  const int64_t profile_first = start_step + std::min<int64_t>(1, std::max<int64_t>(0, total_steps - start_step - 1));
  const int64_t pad_multiple = o.pad_to_multiple_of > 0 ? o.pad_to_multiple_of
                               : devices[0].is_cuda() ? std::min<int64_t>(kGpuPadMultiple, seq_len)
                                                      : 1;
  auto loop_start = std::chrono::steady_clock::now();
  for (int64_t step = start_step; step < total_steps; ++step) {
    // Every rank's share of the step is built here (every process knows the whole order), so the
    // step's counted targets, which every rank's loss is scaled by, need no communication.
    std::vector<std::vector<MicroBatch>> shards(ranks);  // [rank][micro-batch]
    int64_t drawn = step * per_step;
    int64_t step_tokens = 0;
    for (int64_t k = 0; k < o.grad_accum; ++k) {
      std::vector<int64_t> idx;
      for (int64_t b = 0; b < o.batch_size; ++b) idx.push_back(order.index(drawn++));
      const auto parts = ranks > 1 ? shard_indices(idx, ranks) : std::vector<std::vector<int64_t>>{idx};
      for (int r = 0; r < ranks; ++r) {
        shards[r].push_back(make_micro_batch(data, parts[r], pad_multiple, seq_len));
        step_tokens += shards[r].back().tokens.rows();
      }
    }
    int64_t counted = 0;
    for (const auto& shard : shards) counted += counted_targets(shard);
    const std::vector<std::vector<MicroBatch>> local(shards.begin() + first_rank,
                                                     shards.begin() + first_rank + local_ranks);
    const double lr = lr_at(sched, step);
    auto t0 = std::chrono::steady_clock::now();
    const bool profiled = profile::enabled() && step >= profile_first && step < profile_first + kProfileSteps;
    if (profiled) profile::begin_step(m.device());
    StepResult r = comm             ? train_step_parallel(contexts, *comm, local, counted, lr)
                   : stages.empty() ? train_step(lead.ctx, shards[0], lr)
                                    : train_step_pipeline(pipeline, shards[0], lr);
    if (profiled) profile::end_step();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (profiled && (step + 1 == profile_first + kProfileSteps || step + 1 == total_steps)) bar.print(profile::report());
    tokens_total += step_tokens;
    if (r.skipped) {
      ++summary.skipped_steps;
      bar.print("step " + std::to_string(step + 1) + ": gradients not finite, step skipped");
    }
    if (step == start_step) summary.first_loss = r.loss;
    summary.last_loss = r.loss;
    size_t reserved = device_peak_reserved(m.device());  // rank 0's GPU (0 on the CPU); a split: the fullest
    std::vector<double> stage_gib;
    for (const Device d : stages) {
      stage_gib.push_back(static_cast<double>(device_peak_reserved(d)) / (1 << 30));
      reserved = std::max(reserved, device_peak_reserved(d));
    }
    nlohmann::json line{{"step", step + 1}, {"loss", r.loss}, {"lr", lr}, {"grad_norm", r.grad_norm},
                        {"tokens", step_tokens}, {"tokens_per_second", step_tokens / std::max(dt, 1e-9)},
                        {"skipped", r.skipped}, {"epoch", static_cast<double>((step + 1) * per_step) / data.size()}};
    if (reserved) line["gpu_peak_reserved_gib"] = static_cast<double>(reserved) / (1 << 30);
    if (reserved && !stage_gib.empty()) line["gpu_peak_reserved_gib_per_device"] = stage_gib;
    if (writer) metrics.write(line);
    bar.update(step + 1, {r.loss, lr, step_tokens,
                          reserved ? static_cast<double>(reserved) / (1 << 30) : std::nan("")});
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < total_steps) {
      if (auto l = run_eval(step + 1, "during")) bar.print("step " + std::to_string(step + 1) + ": eval loss " + std::to_string(*l));
    }
    if (writer && o.save_every > 0 && (step + 1) % o.save_every == 0) {
      const std::string dir = (fs::path(o.out_dir) / io::checkpoint_name(step + 1)).string();
      nlohmann::json state{{"step", step + 1}, {"total_steps", total_steps}, {"optimizer_steps", optimizer.steps()},
                           {"dropout_rng", {{"seed", dropout_rng.seed()}, {"offset", dropout_rng.offset()}}},
                           {"examples_seen", drawn}, {"identity", identity}};
      io::write_checkpoint_dir(dir, [&](const std::string& tmp) {
        std::vector<std::pair<std::string, Tensor>> w, opt_state;
        for (auto& p : params) w.emplace_back(p.name, p.param.to(Device::cpu()));
        for (auto& [n, t] : optimizer.state_tensors()) opt_state.emplace_back(n, t.to(Device::cpu()));
        io::write_safetensors((fs::path(tmp) / "weights.safetensors").string(), w);
        io::write_safetensors((fs::path(tmp) / "optimizer.safetensors").string(), opt_state);
        if (adapter) adapter->write_files(tmp);
        io::write_json_atomic((fs::path(tmp) / "trainer_state.json").string(), state);
      }, nlohmann::json{{"kind", "lowrank-checkpoint"}, {"step", step + 1}});
      // transformers' save_total_limit: the oldest complete checkpoints go once the new one is in place.
      if (o.save_total_limit > 0) {
        auto kept = io::list_checkpoints(o.out_dir);
        for (size_t i = 0; i + static_cast<size_t>(o.save_total_limit) < kept.size(); ++i) fs::remove_all(kept[i].second);
      }
    }
    if (kill_after && std::atoll(kill_after) == step + 1) std::raise(SIGKILL);
  }
  bar.finish();
  summary.steps = total_steps;
  summary.eval_loss_after = run_eval(total_steps, "after");
  // Final output: the adapter folder (PEFT format) or, with --full, a complete model folder.
  if (writer) {
    if (adapter) {
      adapter->write_files(o.out_dir);
    } else {
      // The weights the model computes with: f32 on the CPU, bf16 on the GPU (rounded from the f32
      // masters, which the checkpoints keep).
      model::write_model_folder(m, o.model_dir, o.out_dir, {m.weights().embed.dtype()});
    }
    if (chat_template)  // generate, eval and merge take it from there
      io::write_file_atomic((fs::path(o.out_dir) / "chat_template.jinja").string(), *chat_template);
  }
  const double loop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_start).count();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  summary.tokens_per_second = tokens_total / std::max(loop_s, 1e-9);
  return summary;
}

}  // namespace lowrank::train
