// lowrank train: LoRA (or full) fine-tuning of a model folder on a dataset.
#include <cstdio>
#include <map>
#include <type_traits>

#include "command.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/train/trainer.h"

namespace lowrank::cli {
namespace {

struct TrainArgs {
  train::TrainOptions o;
  int64_t rank = 8;
  double alpha = 16, dropout = 0.05;
  std::string targets = "q_proj,v_proj", schedule = "cosine", bias = "none", init = "kaiming";
  std::string rank_pattern, alpha_pattern;  // PEFT's regex-keyed dicts, as JSON objects
  std::vector<std::string> exclude;          // --exclude-modules: PEFT's exclude_modules (names)
  std::string quantize = "none";
  bool rslora = false, use_dora = false, dropout_per_input = false;
};

// A JSON object of positive numbers keyed by module names or regexes (PEFT's rank_pattern /
// alpha_pattern), from a command-line flag; integers only for ranks.
template <typename T>
std::map<std::string, T> parse_pattern(const std::string& text, const char* flag) {
  std::map<std::string, T> out;
  if (text.empty()) return out;
  const nlohmann::json j = io::parse_json(text, flag);
  if (!j.is_object()) throw lowrank::error(flag, ": expected a JSON object such as '{\"q_proj\": 4}'");
  for (const auto& [key, v] : j.items()) {
    const bool ok = std::is_integral_v<T> ? v.is_number_integer() : v.is_number();
    if (!ok || !(v.template get<double>() > 0))
      throw lowrank::error(flag, ": \"", key, "\" must map to a positive ", std::is_integral_v<T> ? "integer" : "number",
                           ", got ", v.dump());
    out[key] = v.template get<T>();
  }
  return out;
}

int run_train(TrainArgs& a) {
  train::TrainOptions& o = a.o;
  o.lora.r = a.rank;
  o.lora.alpha = a.alpha;
  o.lora.dropout = a.dropout;
  o.lora.dropout_per_input = a.dropout_per_input;
  o.lora.use_rslora = a.rslora;
  o.lora.set_targets(a.targets);
  o.lora.exclude_modules = a.exclude;
  o.lora.rank_pattern = parse_pattern<int64_t>(a.rank_pattern, "--rank-pattern");
  o.lora.alpha_pattern = parse_pattern<double>(a.alpha_pattern, "--alpha-pattern");
  if (a.bias == "none") o.lora.bias = lora::BiasMode::None;
  else if (a.bias == "all") o.lora.bias = lora::BiasMode::All;
  else if (a.bias == "lora_only") o.lora.bias = lora::BiasMode::LoraOnly;
  else throw lowrank::error("--bias must be none, all or lora_only, got '", a.bias, "'");
  lora::LoraConfig::parse_init(a.init, &o.lora.init, &o.lora.pissa_niter, "--init");
  o.lora.use_dora = a.use_dora;
  o.schedule = train::parse_schedule(a.schedule);
  o.quantize = model::parse_quantization(a.quantize);
  auto s = train::run_training(o);
  if (!s.wrote_output) return 0;  // a rank other than 0 of a multi-process run: rank 0 reports
  std::fprintf(stderr, "trained %lld steps in %.1f s (%.0f tokens/s); loss %.4f -> %.4f",
               static_cast<long long>(s.steps), s.seconds, s.tokens_per_second, s.first_loss, s.last_loss);
  if (s.eval_loss_before && s.eval_loss_after)
    std::fprintf(stderr, "; eval loss %.4f -> %.4f", *s.eval_loss_before, *s.eval_loss_after);
  else if (s.eval_loss_after)
    std::fprintf(stderr, "; eval loss %.4f", *s.eval_loss_after);
  if (s.skipped_steps) std::fprintf(stderr, "; %lld steps skipped (non-finite gradients)", (long long)s.skipped_steps);
  std::fprintf(stderr, "\n%s written to %s\n", o.full ? "model" : "adapter", o.out_dir.c_str());
  return 0;
}

RegisterCommand reg{{"train", "Fine-tune a model with LoRA (or --full) and write a PEFT adapter",
                     [](CLI::App& app) {
                       auto a = std::make_shared<TrainArgs>();
                       auto& o = a->o;
                       app.add_option("--model", o.model_dir, "Hugging Face model folder")->required();
                       app.add_option("--data", o.data_path, "Training data (.jsonl or .txt)")->required();
                       app.add_option("--out", o.out_dir, "Output folder (adapter, checkpoints, metrics.jsonl)")->required();
                       app.add_option("--eval-data", o.eval_data, "Evaluation data, scored before/after (and --eval-every)");
                       app.add_option("--rank", a->rank, "LoRA rank r")->capture_default_str();
                       app.add_option("--alpha", a->alpha, "LoRA alpha (scale = alpha / r)")->capture_default_str();
                       app.add_option("--dropout", a->dropout, "LoRA dropout")->capture_default_str();
                       app.add_flag("--dropout-per-input", a->dropout_per_input,
                                    "One dropout mask per distinct input (q, k, v share one; gate, up another) "
                                    "instead of one per projection: faster on a GPU");
                       app.add_option("--targets", a->targets,
                                      "Modules to adapt: q_proj,v_proj,... (embed_tokens and lm_head too), all-linear (with ,lm_head / "
                                      ",embed_tokens: those too), or none "
                                      "(with --bias all: bias-only training, BitFit)")
                           ->capture_default_str();
                       app.add_option("--modules-to-save", a->o.lora.modules_to_save,
                                      "Train whole copies of these layers besides the adapter: embed_tokens, lm_head "
                                      "(PEFT's modules_to_save; CPU)")
                           ->delimiter(',');
                       app.add_option("--exclude-modules", a->exclude,
                                      "Modules --targets selects that get no LoRA, e.g. down_proj or "
                                      "model.layers.0.mlp.up_proj (PEFT's exclude_modules)")
                           ->delimiter(',');
                       app.add_option("--layers-to-transform", a->o.lora.layers_to_transform,
                                      "Adapt only the blocks with these indices, e.g. 0,1,2 (PEFT's layers_to_transform)")
                           ->delimiter(',');
                       app.add_option("--layers-pattern", a->o.lora.layers_pattern,
                                      "The name of the blocks' list in module paths, e.g. layers or h (PEFT's "
                                      "layers_pattern; default: the first numbered segment)")
                           ->delimiter(',');
                       app.add_flag("--rslora", a->rslora, "Rank-stabilised scale alpha / sqrt(r)");
                       app.add_option("--rank-pattern", a->rank_pattern,
                                      "Per-module ranks as PEFT's rank_pattern, JSON: '{\"q_proj\": 4, \"layers\\\\.0\\\\..*\": 16}'");
                       app.add_option("--alpha-pattern", a->alpha_pattern,
                                      "Per-module alphas as PEFT's alpha_pattern, JSON: '{\"v_proj\": 32}'");
                       app.add_option("--bias", a->bias, "Also train biases: none, all, lora_only")->capture_default_str();
                       app.add_option("--init", a->init,
                                      "LoRA init: kaiming (PEFT default), gaussian, pissa, pissa_niter_N or olora "
                                      "(PiSSA/OLoRA: the adapter is saved for the original base)")
                           ->capture_default_str();
                       app.add_flag("--use-dora", a->use_dora,
                                    "DoRA: a trained magnitude per output row of every adapted linear layer");
                       app.add_flag("--full", o.full, "Train every weight (full fine-tuning) instead of LoRA");
                       app.add_option("--quantize", a->quantize,
                                      "none, or nf4: QLoRA, the blocks' frozen linear weights in 4-bit NormalFloat "
                                      "(bitsandbytes' layout, double-quantized scales), dequantized per GEMM")
                           ->capture_default_str();
                       app.add_option("--chat-template", o.chat_template,
                                      "Template for {\"messages\"} data: a built-in (llama3, chatml, ...) or a Jinja "
                                      "file; saved as chat_template.jinja with the output");
                       app.add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
                       auto* steps = app.add_option("--steps", o.steps, "Optimizer steps");
                       app.add_option("--epochs", o.epochs, "Epochs (default 1 when --steps is not given)")->excludes(steps);
                       app.add_option("--batch-size", o.batch_size, "Sequences per micro-batch")->capture_default_str();
                       app.add_option("--seq-len", o.seq_len, "Maximum tokens per sequence")->capture_default_str();
                       app.add_option("--pad-to-multiple-of", o.pad_to_multiple_of,
                                      "Pad each micro-batch's length up to a multiple of N (at most --seq-len): fewer "
                                      "distinct shapes for the GPU to set up (default: 8 on a GPU, 1 on the CPU)")
                           ->check(CLI::PositiveNumber);
                       app.add_option("--grad-accum", o.grad_accum, "Micro-batches per optimizer step")->capture_default_str();
                       app.add_option("--warmup", o.warmup, "Linear warmup steps")->capture_default_str();
                       app.add_option("--warmup-ratio", o.warmup_ratio,
                                      "Warmup as a fraction of the steps, rounded up (transformers' warmup_ratio)");
                       app.add_option("--schedule", a->schedule, "cosine, linear, constant or cosine_with_min_lr")
                           ->capture_default_str();
                       app.add_option("--min-lr-rate", o.min_lr_rate,
                                      "cosine_with_min_lr: the lr it decays to, as a fraction of --lr (e.g. 0.1)");
                       app.add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->capture_default_str();
                       app.add_option("--adam-beta1", o.adam_beta1, "AdamW beta1")->capture_default_str();
                       app.add_option("--adam-beta2", o.adam_beta2, "AdamW beta2")->capture_default_str();
                       app.add_option("--adam-epsilon", o.adam_epsilon, "AdamW epsilon")->capture_default_str();
                       app.add_option("--loraplus-lr-ratio", o.loraplus.lr_ratio,
                                      "LoRA+: B's learning rate is --lr times this (e.g. 16; 0: off), as PEFT's "
                                      "create_loraplus_optimizer");
                       app.add_option("--loraplus-lr-embedding", o.loraplus.lr_embedding,
                                      "LoRA+: the learning rate of embedding adapters (default 1e-6, as PEFT)");
                       app.add_option("--max-grad-norm", o.max_grad_norm, "Global gradient-norm clip (0: off)")
                           ->capture_default_str();
                       app.add_option("--seed", o.seed, "Seed for init, shuffling and dropout")->capture_default_str();
                       auto* device = app.add_option("--device", o.device, "cpu or cuda[:N]")->capture_default_str();
                       app.add_option("--devices", o.devices,
                                      "Data parallel, one rank per device: cuda:0,cuda:1,... (NCCL) or cpu,cpu "
                                      "(threads); --batch-size is the global batch")
                           ->delimiter(',')
                           ->excludes(device);
                       app.add_option("--split", o.split,
                                      "layers: split the model over --devices by layers (pipeline parallel, for "
                                      "bases larger than one GPU) instead of data parallel");
                       app.add_option("--save-every", o.save_every, "Checkpoint every N steps");
                       app.add_flag("--packing", o.packing,
                                    "Join the examples (each with its eos) and cut them into --seq-len blocks: no padding "
                                    "(TRL's packing, strategy \"wrapped\")");
                       app.add_option("--save-total-limit", o.save_total_limit,
                                      "Keep only the N newest checkpoints (0: all; transformers' save_total_limit)");
                       app.add_option("--eval-every", o.eval_every, "Evaluate --eval-data every N steps");
                       app.add_flag("--resume", o.resume, "Continue from the newest checkpoint in --out");
                       app.add_flag("--checkpointing", o.checkpointing,
                                    "Recompute activations in backward (less memory, more compute)");
                       app.add_flag("--quiet", o.quiet, "No progress bar");
                       return [a] { return run_train(*a); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
