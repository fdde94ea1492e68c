#include "lowrank/lora/merge.h"

#include "lowrank/core/error.h"
#include "lowrank/lora/lora_variant.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {

void merge_adapter(model::Model& model, const Adapter& adapter, double user_scale, int sign) {
  auto& w = model.weights();
  for (const auto& p : adapter.pairs) {
    // The frozen weight the layer adapts: a block's projection, the embedding table or the lm_head
    // (a tied lm_head is the embedding's tensor: merging into either changes both, as in PEFT).
    Tensor* weight = nullptr;
    if (p.target == Target::Embed) weight = &w.embed;
    else if (p.target == Target::LmHead) weight = &w.lm_head;
    else if (model::Linear* l = w.layers[p.layer].projection(p.target)) {
      // PEFT's merge into a 4-bit layer dequantizes, adds and re-quantizes (rounding the update
      // away in part); we refuse instead: merge into the full-precision base.
      if (l->quantized())
        throw error("merging ", p.module, " into an NF4-quantized weight is not supported: merge the adapter into "
                    "the unquantized base model (lowrank merge, without --quantize)");
      if (l->held_in_bf16_on_cpu()) l->weight = l->weight.to(DType::F32);  // merged in f32, as the CPU computes
      weight = &l->weight;
    }
    LR_CHECK(weight, "no weight for ", p.module);
    if (sign < 0 && p.kind == VariantKind::Dora)
      throw error("unmerging a DoRA layer (", p.module, ") is not supported: reload the base model instead");
    lora_variant(p.kind).merge(p, *weight, sign * user_scale);
  }
}

std::optional<model::Model> merged_copy(const model::Model& model, const MixableAdapter& adapter, double user_scale) {
  model::Model copy = model;  // shares every tensor until one is replaced below
  for (const auto& [key, layer] : adapter.layers()) {
    model::Linear* l = copy.weights().layers.at(key.first).projection(static_cast<Target>(key.second));
    LR_CHECK(l, "the model has no projection for a layer of the adapter");
    if (l->quantized()) return std::nullopt;
    // A bf16 weight on the CPU (KeepBf16) becomes f32: the update is added in f32, as the CPU computes.
    l->weight = l->held_in_bf16_on_cpu() ? l->weight.to(DType::F32) : l->weight.clone();
    ops::matmul_nn(layer.B, layer.A, l->weight, static_cast<float>(layer.scale * user_scale), 1.0f);
  }
  return copy;
}

}  // namespace lowrank::lora
