#pragma once
// Merging: W = W0 + Σ s·u·B·A, computed in f32 on the model's weights, so inference with a merged
// model costs nothing extra. Unmerging subtracts the same delta (W0 comes back to rounding).
#include "lowrank/lora/adapter.h"

namespace lowrank::lora {

// Adds (sign = +1) or subtracts (sign = -1) user_scale · scale · B·A into every adapted weight.
void merge_adapter(model::Model& model, const Adapter& adapter, double user_scale, int sign = +1);

}  // namespace lowrank::lora
