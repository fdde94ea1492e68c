#pragma once
// An adapter made ready for mixed-adapter batches (mixed_batch_hook.h): each adapted block
// projection's A [r, in] and B [out, r] on the compute device, in the activations' dtype, with
// PEFT's scale (alpha / r). Only plain LoRA on the blocks' projections mixes: DoRA needs the frozen
// weight's row norms, embedding and lm_head LoRA are other ops, trained biases change the base —
// adapters with those run through their own LoraHook.
#include <cstddef>
#include <map>
#include <utility>

#include "lowrank/lora/adapter.h"

namespace lowrank::lora {

// Whether `adapter` can join a mixed batch of a model with `num_layers` blocks.
bool is_mixable(const Adapter& adapter, int num_layers);

struct MixableLayer {
  Tensor A;  // [r, in]
  Tensor B;  // [out, r]
  double scale = 1.0;  // alpha / r (the user's scale is per row of the batch, not here)
};

class MixableAdapter {
 public:
  // Copies (casts) every layer of a mixable adapter to `device` in `dtype`. Error when the adapter
  // is not mixable.
  MixableAdapter(const Adapter& adapter, int num_layers, Device device, DType dtype);
  // The layer's tensors, or null when the adapter does not adapt (layer, target).
  const MixableLayer* find(int layer, Target target) const;
  const std::map<std::pair<int, int>, MixableLayer>& layers() const { return layers_; }
  size_t bytes() const { return bytes_; }

 private:
  std::map<std::pair<int, int>, MixableLayer> layers_;  // by (layer, Target)
  size_t bytes_ = 0;
};

}  // namespace lowrank::lora
