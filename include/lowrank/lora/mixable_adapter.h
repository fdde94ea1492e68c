#pragma once
// An adapter made ready for mixed-adapter batches (mixed_batch_hook.h): each adapted block
// projection's A [r, in] and B [out, r] on the compute device, in the activations' dtype, with
// PEFT's scale (alpha / r). Only plain LoRA on the blocks' projections mixes: DoRA needs the frozen
// weight's row norms, embedding and lm_head LoRA are other ops, trained biases change the base —
// adapters with those run through their own LoraHook.
#include <cstddef>
#include <map>
#include <memory>
#include <utility>

#include "lowrank/core/host_staging.h"
#include "lowrank/lora/adapter.h"

namespace lowrank::lora {

// Whether `adapter` can join a mixed batch of a model with `num_layers` blocks.
bool is_mixable(const Adapter& adapter, int num_layers);

struct MixableLayer {
  Tensor A;  // [r, in]
  Tensor B;  // [out, r]
  double scale = 1.0;  // alpha / r (the user's scale is per row of the batch, not here)
};

// Every A and B lives in one slab on the device, each tensor on a 256-byte boundary: an adapter's
// first use is one allocation and one copy, not two per projection (an all-linear adapter of a
// 24-layer model has 336 tensors, copied inside the prefill that first uses it).
class MixableAdapter {
 public:
  // Copies (casts) every layer of a mixable adapter to `device` in `dtype`. Error when the adapter
  // is not mixable. On a CUDA device the host adapter is cast straight into page-locked memory
  // and uploaded from there without waiting for the device (a copy from pageable memory waits
  // for the stream to drain): `*staging` is that memory, made or grown here when it is missing
  // or too small, for the caller to keep and pass again (null: a temporary one).
  MixableAdapter(const Adapter& adapter, int num_layers, Device device, DType dtype,
                 std::unique_ptr<HostStaging>* staging = nullptr);
  // The layer's tensors, or null when the adapter does not adapt (layer, target).
  const MixableLayer* find(int layer, Target target) const;
  const std::map<std::pair<int, int>, MixableLayer>& layers() const { return layers_; }
  size_t bytes() const { return bytes_; }

 private:
  std::map<std::pair<int, int>, MixableLayer> layers_;  // by (layer, Target); views of one slab
  size_t bytes_ = 0;  // the tensors' bytes (the slab's padding not counted)
};

}  // namespace lowrank::lora
