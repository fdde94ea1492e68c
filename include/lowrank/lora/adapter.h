#pragma once
// Adapter: the LoRA pairs (and trainable biases) of one adapter, keyed by (layer, Target), and its
// PEFT folder format: adapter_config.json + adapter_model.safetensors with keys
// "base_model.model.<module path>.lora_A.weight" [r, in] and ".lora_B.weight" [out, r].
#include <string>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/core/tensor.h"
#include "lowrank/lora/config.h"
#include "lowrank/model/target.h"
#include "lowrank/model/model.h"

namespace lowrank::lora {

struct LoraPair {
  int layer = 0;
  Target target = Target::Q;
  std::string module;   // e.g. "model.layers.0.self_attn.q_proj"
  int64_t r = 0;
  double scale = 1.0;   // alpha / r (or alpha / sqrt(r))
  Tensor A;             // [r, in]  f32
  Tensor B;             // [out, r] f32
  Tensor grad_A, grad_B;  // same shapes, while training
  // Training on the GPU: bf16 copies of A and B that the GEMMs use, written by AdamW in the same
  // pass as the f32 masters (undefined otherwise: the hook rounds A and B per forward pass).
  Tensor A_work, B_work;
};

// A bias trained with bias=all / lora_only (BitFit-style): replaces the model's bias of `module`.
struct BiasParam {
  int layer = 0;
  Target target = Target::Q;
  std::string module;
  Tensor value;  // [out]
  Tensor grad;   // [out], while training
};

// One trainable tensor of an adapter with its gradient and (A and B on the GPU) its working copy.
// Adapter::parameters() is the one list that device moves, gradients, working copies, counting,
// the optimizer and checkpoints walk: a new kind of trainable tensor is added there only.
struct AdapterParam {
  std::string name;  // unique: "<module>.lora_A", "<module>.lora_B", "<module>.bias"
  Tensor* value;
  Tensor* grad;
  Tensor* working;   // null: this kind of tensor is used as it is (biases)
};

class Adapter {
 public:
  LoraConfig config;
  std::vector<LoraPair> pairs;
  std::vector<BiasParam> biases;

  // A new adapter for `model`: A initialised per config.init from `rng`, B = 0, biases copied
  // from the model. Throws Error listing the module names if the targets match nothing.
  static Adapter create(const model::Model& model, const LoraConfig& config, Rng& rng);
  // Loads a PEFT adapter folder and checks it against `model` (tensor names and shapes).
  static Adapter load(const std::string& dir, const model::Model& model);
  // Writes a PEFT adapter folder atomically (temp folder, fsync, rename).
  void save(const std::string& dir) const;
  // Writes adapter_model.safetensors, then adapter_config.json, each atomically, into an existing
  // folder (used inside checkpoints and for a training run's output folder).
  void write_files(const std::string& dir) const;

  const LoraPair* find(int layer, Target t) const;
  LoraPair* find(int layer, Target t);
  std::string bias_key(const BiasParam& b) const;  // PEFT's key for a trained bias
  int64_t parameter_count() const;  // trainable parameters (A, B and biases)
  // Makes the model use this adapter's biases (bias=all / lora_only): the model's Linear.bias
  // then shares the adapter's tensor, so training one trains the other.
  void attach_biases(model::Model& model);
  // Every trainable tensor: each pair's A then B, in pair order, then the biases.
  std::vector<AdapterParam> parameters();
  void allocate_grads();   // zero gradients on the adapter's device
  // Keeps `dtype` copies of every A and B for the GEMMs (bf16 on the GPU; nothing for f32).
  void make_working_copies(DType dtype);
  void to(Device device);  // moves weights (and gradients, working copies) to `device`
};

// The (layer, Target, Linear) of every linear layer LoRA may adapt in `model` (all-linear's set).
struct AdaptableModule {
  int layer;
  Target target;
  const model::Linear* linear;
};
std::vector<AdaptableModule> adaptable_modules(const model::Model& model);

// PEFT's key for a LoRA tensor or bias of a module.
std::string peft_key(const std::string& module, const std::string& suffix);

}  // namespace lowrank::lora
