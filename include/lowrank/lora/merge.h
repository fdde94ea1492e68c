#pragma once
// Merging: each layer's variant folds it into its frozen weight in f32 (W = W0 + s·u·B·A; DoRA:
// W = m/||W0 + s·u·B·A|| ⊙ (W0 + s·u·B·A); embeddings: E += s·u·Aᵀ Bᵀ), so inference with a merged
// model costs nothing extra. Unmerging subtracts the same delta (W0 comes back to rounding; not DoRA).
#include "lowrank/lora/adapter.h"

namespace lowrank::lora {

// Merges (sign = +1) or unmerges (sign = -1) every layer of `adapter` at user_scale.
void merge_adapter(model::Model& model, const Adapter& adapter, double user_scale, int sign = +1);

}  // namespace lowrank::lora
