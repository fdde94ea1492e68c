#pragma once
// The training run behind `lowrank train`: data, LoRA (or --full) parameters, the step loop with
// progress bar and metrics.jsonl, periodic evaluation, atomic checkpoints and exact resume.
#include <optional>
#include <string>
#include <vector>

#include "lowrank/lora/config.h"
#include "lowrank/model/weights.h"
#include "lowrank/train/loraplus.h"
#include "lowrank/train/schedule.h"

namespace lowrank::train {

struct TrainOptions {
  std::string model_dir, data_path, out_dir, eval_data;
  lora::LoraConfig lora;
  bool full = false;           // every weight trainable (full fine-tuning) instead of LoRA
  // --quantize nf4 (QLoRA): the blocks' frozen projections in NF4, dequantized for each GEMM.
  model::Quantization quantize = model::Quantization::None;
  double lr = 2e-4;
  int64_t steps = 0;           // optimizer steps; 0: from epochs
  int64_t epochs = 0;          // 0 and steps 0: one epoch
  int64_t batch_size = 4;
  int64_t seq_len = 512;
  // Micro-batches are padded to their longest sequence, rounded up to a multiple of this (at most
  // --seq-len): fewer distinct shapes, each of which costs a GPU run its setup once (cuDNN plans,
  // GEMM tuning, a step graph). HF's DataCollator pad_to_multiple_of; 1: the longest. 0: 8 on a
  // GPU (a 300-step run on data of 59-128 tokens: 7.8 s with 1, 2.7 s with 8; one H200), 1 on
  // the CPU.
  int64_t pad_to_multiple_of = 0;
  int64_t grad_accum = 1;
  int64_t warmup = 0;
  double warmup_ratio = 0;     // --warmup-ratio: warmup = ceil(steps * ratio) when --warmup is 0
  Schedule schedule = Schedule::Cosine;
  std::optional<double> min_lr_rate;  // --min-lr-rate: cosine_with_min_lr's floor (a fraction of --lr)
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;  // transformers' adam_* (torch's defaults)
  LoraPlusConfig loraplus;     // --loraplus-lr-ratio / --loraplus-lr-embedding: B's own lr (loraplus.h)
  double max_grad_norm = 1.0;  // 0: no clipping
  uint64_t seed = 42;
  int64_t save_every = 0;      // checkpoint every N steps (0: only the final output)
  int64_t save_total_limit = 0;  // keep the N newest checkpoints, older ones deleted (0: all; transformers')
  bool packing = false;        // --data's examples joined and cut into seq_len blocks (TRL's wrapped packing)
  int64_t eval_every = 0;      // evaluate --eval-data every N steps (0: at the end only)
  bool resume = false;
  bool checkpointing = false;  // activation recomputation: less memory, ~1/3 more compute
  bool quiet = false;
  std::string device = "cpu";
  // --devices: data parallel over these (all cpu, for tests, or all cuda:N through NCCL), one
  // rank per device; --batch-size is the global batch and must be a multiple of their number.
  std::vector<std::string> devices;
  // --split layers: instead of data parallel, --devices are the stages of one model split by layers
  // (pipeline parallel, train/pipeline.h); --grad-accum micro-batches fill the pipeline.
  std::string split;
  // --chat-template: a built-in name or a Jinja file for {"messages"} data (a base model has
  // none); written as chat_template.jinja next to the adapter (or into the --full model folder).
  std::string chat_template;
};

struct TrainSummary {
  int64_t steps = 0;
  double first_loss = 0, last_loss = 0;
  std::optional<double> eval_loss_before, eval_loss_after;
  int64_t trainable = 0, total_parameters = 0;
  int64_t skipped_steps = 0;
  double seconds = 0, tokens_per_second = 0;
  bool wrote_output = true;  // false on the ranks other than 0 of a multi-process run
};

TrainSummary run_training(const TrainOptions& options);

}  // namespace lowrank::train
