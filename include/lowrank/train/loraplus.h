#pragma once
// LoRA+ (Hayou, Ghosh and Yu, 2024): B learns with a larger learning rate than A. As PEFT's
// create_loraplus_optimizer builds its param groups, each ParamRef of an adapter gets its group's
// lr scale and weight decay (--weight-decay stands for PEFT's loraplus_weight_decay):
//
//   group       tensors                                     lr                 weight decay
//   embedding   an embedding LoRA's lora_embedding_A / _B   lr_embedding       yes
//   B           lora_B, and every 1-D tensor (DoRA's        lr * lr_ratio      yes, biases no
//               magnitudes, biases)
//   A           the rest (lora_A)                           lr                 yes
//
// The schedule scales every group alike (torch's LambdaLR), so the embedding group's lr is
// lr_embedding times the schedule's factor (scale lr_embedding / lr here).
#include <optional>
#include <vector>

#include "lowrank/train/optimizer.h"

namespace lowrank::train {

struct LoraPlusConfig {
  double lr_ratio = 0;                  // ηB / ηA (--loraplus-lr-ratio); 0: LoRA+ off
  std::optional<double> lr_embedding;   // --loraplus-lr-embedding; PEFT's default 1e-6
  bool enabled() const { return lr_ratio != 0; }
  double embedding_lr() const { return lr_embedding.value_or(1e-6); }
  // Throws Error naming the flag: a ratio or embedding lr that is not a positive number, an
  // embedding lr without a ratio, or LoRA+ with full fine-tuning (it has no A and B).
  void validate(bool full) const;
};

// Sets lr_scale and decay of every adapter tensor in `params` (named as Adapter::parameters()
// names them) for base learning rate `lr`; does nothing when LoRA+ is off.
void apply_loraplus(std::vector<ParamRef>& params, const LoraPlusConfig& config, double lr);

}  // namespace lowrank::train
