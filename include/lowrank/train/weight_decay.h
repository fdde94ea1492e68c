#pragma once
// Which trained tensors AdamW's weight decay applies to: transformers' Trainer's rule
// (Trainer.get_decay_parameter_names), under which PEFT's and TRL's training scripts run. Not
// biases and not normalization weights (nn.LayerNorm modules, and names matching "bias",
// "layernorm", "rmsnorm", a "norm" component or a "_norm" suffix, lowercased); every other
// tensor is decayed: LoRA's A and B, DoRA's magnitudes, embeddings, projections.
#include <string_view>
#include <vector>

#include "lowrank/model/weights.h"
#include "lowrank/train/optimizer.h"

namespace lowrank::train {

// By the name alone (a Hugging Face or PEFT tensor name).
bool decayed_by_name(std::string_view name);

// Sets ParamRef::decay of each of `params`; `weights`, for full fine-tuning, tells which tensors
// belong to a normalization layer whatever their names (GPT-2's ln_1, ln_2, ln_f).
void apply_decay_rule(std::vector<ParamRef>& params, const model::ModelWeights* weights = nullptr);

}  // namespace lowrank::train
