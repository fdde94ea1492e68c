#pragma once
// Adapter: the LoRA layers (and trainable biases) of one adapter, keyed by (layer, Target), and its
// PEFT folder format: adapter_config.json + adapter_model.safetensors with keys
// "base_model.model.<module path>.<suffix>": each variant names its tensors (lora_variant.h):
// lora_A.weight [r, in], lora_B.weight [out, r], DoRA's lora_magnitude_vector [out], the
// embedding's lora_embedding_A [r, V] and lora_embedding_B [d, r]; plus trained biases and, when
// an embedding layer is adapted, PEFT's copies of the frozen embedding weights (base_layer.weight).
#include <string>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/core/tensor.h"
#include "lowrank/lora/config.h"
#include "lowrank/lora/lora_pair.h"
#include "lowrank/model/target.h"
#include "lowrank/model/model.h"

namespace lowrank::lora {

// A bias trained with bias=all / lora_only (BitFit-style): replaces the model's bias of `module`.
struct BiasParam {
  int layer = 0;
  Target target = Target::Q;
  std::string module;
  Tensor value;  // [out]
  Tensor grad;   // [out], while training
};

// PEFT's copy of a frozen embedding layer (embed_tokens, lm_head) that it saves next to an adapter
// that adapts one (save_embedding_layers="auto"): "<module>.base_layer.weight" [V, d].
struct BaseLayerWeight {
  Target target = Target::Embed;
  std::string module;
  Tensor value;  // [V, d]: the model's own tensor when created here, the file's when loaded
};

// PEFT's modules_to_save copy of the embedding or the output layer: the whole trained weight,
// "<module>.weight" [V, d], used instead of the model's. As PEFT's ModulesToSaveWrapper does, it
// unties a tied pair: the other layer keeps the base's values.
struct SavedModule {
  Target target = Target::Embed;
  std::string module;
  Tensor value;  // [V, d], f32: the file's, or (train --modules-to-save) a copy of the model's that the model computes with
  Tensor grad;   // [V, d], training only
  int layer = -1;  // -1: the embedding; the number of layers: the lm_head (AdapterParam::layer)
};

// One trainable tensor of an adapter with its gradient and (A and B on the GPU) its working copy.
// Adapter::parameters() is the one list that device moves, gradients, working copies, counting,
// the optimizer and checkpoints walk: a new kind of trainable tensor is added there only.
struct AdapterParam {
  std::string name;  // unique: "<module>.lora_A", "<module>.lora_magnitude_vector", "<module>.bias", ...
  Tensor* value;
  Tensor* grad;
  Tensor* working;   // null: this kind of tensor is used as it is (biases)
  int layer = 0;     // the layer it adapts (-1: the embedding, num_layers: the lm_head)
  // A second home of the working copy (LoraPair::W_ext for B), in columns [also_col, ...): or null.
  Tensor* also = nullptr;
  int64_t also_col = 0;
};

class Adapter {
 public:
  LoraConfig config;
  std::vector<LoraPair> pairs;
  std::vector<BiasParam> biases;
  std::vector<BaseLayerWeight> base_layers;
  std::vector<SavedModule> saved_modules;  // PEFT's modules_to_save copies (train --modules-to-save)

  // A new adapter for `model`: A and B initialised per config.init (lora_init.h) from `rng`, DoRA
  // magnitudes from the weights, biases copied from the model. PiSSA / OLoRA replace the adapted
  // weights of `model` by their residuals. Throws Error listing the module names if the targets
  // match nothing, or for a combination that is refused (DoRA on an embedding, PiSSA on one, ...).
  static Adapter create(model::Model& model, const LoraConfig& config, Rng& rng);
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
  int64_t parameter_count() const;  // trainable parameters (every parameters() tensor)
  // Makes the model use this adapter's biases (bias=all / lora_only): the model's Linear.bias
  // then shares the adapter's tensor, so training one trains the other.
  void attach_biases(model::Model& model);
  // Makes the model's frozen weights what PEFT's load makes them: the saved base_layer weights
  // (embedding layers) copied into the embedding / lm_head (a tied lm_head follows its
  // embedding); the modules_to_save copies in place of the model's layers (untying them); for an
  // adapter whose config still says init_lora_weights "pissa" / "olora" (saved unconverted), PEFT
  // re-runs the init and trains on the residual: the adapted weights become W0 - s·B0·A0 of that
  // init ("pissa_niter_N" draws random numbers we cannot reproduce: refused).
  void attach_base_layers(model::Model& model) const;
  // The modules_to_save copies in place of the model's layers (part of attach_base_layers; what
  // a created adapter needs: train --modules-to-save).
  void attach_saved_modules(model::Model& model) const;
  // Every trainable tensor: each pair's tensors (its variant's list: A, B, ...), in pair order,
  // then the biases.
  std::vector<AdapterParam> parameters();
  void allocate_grads();   // zero gradients on the adapter's device
  // Keeps `dtype` copies of every A and B for the GEMMs (bf16 on the GPU; nothing for f32).
  void make_working_copies(DType dtype);
  void to(Device device);  // moves weights (and gradients, working copies) to `device`
  // Moves each tensor to the device of its layer in `model` (create and load do this; a model split
  // over devices has each layer's pairs next to its weights).
  void place(const model::Model& model);
};

// The (layer, Target, frozen layer) of a module LoRA may adapt.
struct AdaptableModule {
  int layer;
  Target target;
  model::Linear linear;  // its weight [out, in] and bias; the token embedding: its table [V, d]
};
// Every linear layer of the blocks (all-linear's set).
std::vector<AdaptableModule> adaptable_modules(const model::Model& model);
// The token embedding (layer -1) and the lm_head (layer num_layers): adapted only when named.
std::vector<AdaptableModule> embedding_modules(const model::Model& model);

// PEFT's key for a LoRA tensor or bias of a module.
std::string peft_key(const std::string& module, const std::string& suffix);

}  // namespace lowrank::lora
