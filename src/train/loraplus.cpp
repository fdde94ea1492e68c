#include "lowrank/train/loraplus.h"

#include <cmath>
#include <string>

#include "lowrank/core/error.h"

namespace lowrank::train {
namespace {

bool positive(double v) { return v > 0 && std::isfinite(v); }

}  // namespace

void LoraPlusConfig::validate(bool full) const {
  if (lr_embedding && !enabled())
    throw error("--loraplus-lr-embedding is LoRA+'s learning rate for embedding adapters; give --loraplus-lr-ratio too");
  if (!enabled()) return;
  if (!positive(lr_ratio))
    throw error("--loraplus-lr-ratio must be a positive number (B's learning rate over A's, e.g. 16), got ", lr_ratio);
  if (lr_embedding && !positive(*lr_embedding))
    throw error("--loraplus-lr-embedding must be a positive number, got ", *lr_embedding);
  if (full) throw error("--loraplus-lr-ratio sets LoRA's B apart from A; --full trains the weights themselves");
}

void apply_loraplus(std::vector<ParamRef>& params, const LoraPlusConfig& config, double lr) {
  if (!config.enabled()) return;
  for (ParamRef& p : params) {
    // PEFT looks at the tensor's layer for the embedding group and at the name and rank for B.
    if (p.name.ends_with(".lora_embedding_A") || p.name.ends_with(".lora_embedding_B")) {
      p.lr_scale = config.embedding_lr() / lr;
    } else if (p.name.ends_with(".lora_B") || p.param.rank() == 1) {
      p.lr_scale = config.lr_ratio;
      p.decay = !p.name.ends_with(".bias");  // transformers' decay list leaves biases out
    }
  }
}

}  // namespace lowrank::train
