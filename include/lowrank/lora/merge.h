#pragma once
// Merging: each layer's variant folds it into its frozen weight in f32 (W = W0 + s·u·B·A; DoRA:
// W = m/||W0 + s·u·B·A|| ⊙ (W0 + s·u·B·A); embeddings: E += s·u·Aᵀ Bᵀ), so inference with a merged
// model costs nothing extra. Unmerging subtracts the same delta (W0 comes back to rounding; not DoRA).
#include <optional>

#include "lowrank/lora/adapter.h"
#include "lowrank/lora/mixable_adapter.h"

namespace lowrank::lora {

// Merges (sign = +1) or unmerges (sign = -1) every layer of `adapter` at user_scale.
void merge_adapter(model::Model& model, const Adapter& adapter, double user_scale, int sign = +1);

// A copy of `model` with a mixable adapter's device copy merged at user_scale: each adapted
// projection's weight is a new tensor W + s·u·B·A (one GEMM, rounded once to the weight's dtype,
// from the A and B every unmerged batch reads); every other tensor is shared with `model`. What a
// server runs a batch of one adapter on (infer/batch_decoder.h). Nothing when a projection it
// adapts is NF4-quantized (merge_adapter refuses those too).
std::optional<model::Model> merged_copy(const model::Model& model, const MixableAdapter& adapter, double user_scale);

}  // namespace lowrank::lora
