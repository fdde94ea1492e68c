#include "lowrank/lora/merge.h"

#include "lowrank/ops/ops.h"

namespace lowrank::lora {

void merge_adapter(model::Model& model, const Adapter& adapter, double user_scale, int sign) {
  for (const auto& p : adapter.pairs) {
    model::Linear* l = model.weights().layers[p.layer].projection(p.target);
    LR_CHECK(l, "no projection for ", p.module);
    // W [out, in] += sign · s · B [out, r] · A [r, in]
    ops::matmul_nn(p.B, p.A, l->weight, static_cast<float>(sign * p.scale * user_scale), 1.0f);
  }
}

}  // namespace lowrank::lora
