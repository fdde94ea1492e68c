#pragma once
// LoraVariant: the math of one kind of LoRA layer (plain, DoRA, embedding) behind one small
// interface. The hook (lora_hook.h) handles what every variant shares (which adapters are active,
// dropout and its replay, the A/B copies in the activations' dtype) and calls the variant for the
// rest; the adapter (adapter.h) enumerates, saves and loads a layer's tensors through tensors().
// A new variant: a VariantKind, a file implementing this interface, and a line in
// lora_variant.cpp's registry (docs/architecture.md).
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/lora/lora_pair.h"
#include "lowrank/model/weights.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::lora {

// One tensor of a LoRA layer: the checkpoint/optimizer name ("lora_A"), PEFT's key suffix
// ("lora_A.weight"), its value, gradient and working copy (null: used as it is), and its shape.
struct LayerTensor {
  std::string name;
  std::string key;
  Tensor* value;
  Tensor* grad;
  Tensor* working;
  Shape shape;
};

// What the forward pass of one LoRA layer works on.
struct LoraInput {
  const LoraPair& pair;
  const model::Linear& base;  // the frozen layer: weight [out, in] and bias (embedding: table [V, d])
  const Tensor& x_in;         // [N, in] the layer input after LoRA dropout (embedding: unused);
                              // before it when `dropout` is given
  const std::vector<int32_t>* ids;  // embedding: the token ids [N]
  const Tensor& A;            // [r, in] in the activations' dtype (training on the GPU: zero rows
                              // up to a multiple of 8, src/lora/rank_padding.h)
  const Tensor& B;            // [out, r] (zero columns likewise)
  float scale;                // s · the user's --adapter scale
  // Forward of a projection's first term (HookOrder::Before; plain LoRA only): y is made here as
  // this term [+ *addend, the residual stream], and the frozen product is added to it afterwards.
  bool first = false;
  const Tensor* addend = nullptr;
  // LoRA dropout's draws, for a variant that fuses_dropout(): it applies them to x_in itself (in
  // its GEMMs, never writing dropout(x) out). Null: x_in is already dropped out (or no dropout).
  const ops::DropoutDraws* dropout = nullptr;
  // Backward: the weight gradients may go to the device's side stream (ops/side_work.h) — the
  // step overwrites none of the inputs in place before it joins (a decoder layer's projection).
  bool side_work = false;
};

// What a LoRA layer's backward needs from its forward pass (kept by the hook per layer).
struct LoraSaved {
  Tensor h;           // [N, r as A has it]: drop(x) Aᵀ (embedding: Aᵀ[ids])
  Tensor A, B;        // as the forward used them (activations' dtype)
  bool dropped = false;       // dropout applied: backward needs drop(x) again
  uint64_t drop_offset = 0;   // dropout draws started here (drawn again by the backward and by
                              // checkpointing's replay)
  Tensor dora_scale;  // [out] DoRA: magnitude / ||W0 + s·B·A||, the norm detached
  Tensor dora_out;    // [N, out] DoRA: (drop(x) W0ᵀ + s·h Bᵀ) / ||W0 + s·B·A||; d(loss)/dm = Σ_rows dy ⊙ this
};

class LoraVariant {
 public:
  virtual ~LoraVariant() = default;
  // Every tensor of the layer, A and B first: the one list that parameters, save and load walk.
  virtual std::vector<LayerTensor> tensors(LoraPair& p) const = 0;
  // After A and B are initialised at create: the variant's own tensors (DoRA: the magnitude).
  virtual void init_extra(LoraPair& p, const Tensor& base_weight) const {}
  // y += the layer's LoRA output. `saved`, when given, receives what backward needs.
  virtual void forward(const LoraInput& in, Tensor& y, LoraSaved* saved) const = 0;
  // True: forward also takes an undefined y and then only fills `saved` from the input (activation
  // checkpointing's replay of a projection whose output nobody reads). False: backward needs the
  // frozen layer's output too (DoRA).
  virtual bool saves_without_output() const { return false; }
  // True: forward and backward take x before dropout and LoraInput::dropout's draws, and apply
  // them as dropout(x) would (the hook then never materialises it). False: x_in is dropout(x).
  virtual bool fuses_dropout() const { return false; }
  // Accumulates the layer's gradients from dy [N, out]. dx_in (when given) receives the gradient
  // with respect to x_in (given `dropout`: through it, the layer input's): written, or added to
  // with `accumulate`.
  virtual void backward(LoraPair& p, const LoraInput& in, const LoraSaved& saved, const Tensor& dy,
                        Tensor* dx_in, bool accumulate) const = 0;
  // Folds the layer into its frozen weight (the layout of LoraInput::base.weight), in place.
  virtual void merge(const LoraPair& p, Tensor& weight, double user_scale) const = 0;
};

// The registry: the implementation of each kind.
const LoraVariant& lora_variant(VariantKind kind);
std::string_view variant_name(VariantKind kind);  // "LoRA", "DoRA", "embedding LoRA"

}  // namespace lowrank::lora
