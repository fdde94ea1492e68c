#include "lowrank/lora/mixable_adapter.h"

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {

bool is_mixable(const Adapter& adapter, int num_layers) {
  if (!adapter.biases.empty()) return false;
  for (const LoraPair& p : adapter.pairs)
    if (p.kind != VariantKind::Linear || p.layer < 0 || p.layer >= num_layers) return false;
  return true;
}

MixableAdapter::MixableAdapter(const Adapter& adapter, int num_layers, Device device, DType dtype) {
  LR_CHECK(is_mixable(adapter, num_layers), "adapter with DoRA, embedding or lm_head LoRA, or trained biases "
                                            "cannot join a mixed-adapter batch");
  for (const LoraPair& p : adapter.pairs) {
    // A host f32 adapter becomes a device bf16 one: cast on the host (half the bytes to copy).
    MixableLayer l{ops::cast(p.A, dtype).to(device), ops::cast(p.B, dtype).to(device), p.scale};
    if (l.A.raw() == p.A.raw()) l.A = l.A.clone();  // a copy of its own: the adapter may change or go
    if (l.B.raw() == p.B.raw()) l.B = l.B.clone();
    bytes_ += l.A.nbytes() + l.B.nbytes();
    layers_.emplace(std::pair{p.layer, static_cast<int>(p.target)}, std::move(l));
  }
}

const MixableLayer* MixableAdapter::find(int layer, Target target) const {
  auto it = layers_.find({layer, static_cast<int>(target)});
  return it == layers_.end() ? nullptr : &it->second;
}

}  // namespace lowrank::lora
