#pragma once
// The initial A and B of a new LoRA layer, as PEFT's init_lora_weights makes them:
//   kaiming (PEFT's default, init_lora_weights=True): A ~ U(±1/sqrt(in)), B = 0
//   gaussian: A ~ N(0, 1/r²), B = 0
//   embedding layers (any of the two): A = 0, B ~ N(0, 1)
//   pissa: W0 = U S Vᵀ; B = U_r sqrt(S_r/s), A = sqrt(S_r/s) V_rᵀ (s·B·A: W0's best rank-r part);
//          pissa_niter_N: the same from torch.svd_lowrank's randomized SVD with N subspace iterations
//   olora: W0 = Q R; B = Q[:, :r], A = R[:r]
// PiSSA and OLoRA then train on the residual W0 - s·B·A in place of W0. The saved adapter is
// converted the way PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) does, so
// that it applies to the original base: rank 2r with A' = [A; A0], B' = [B, -B0] and alpha
// doubled (√2 with rsLoRA), keeping the scale s: s·B'·A' = s·B·A - s·B0·A0.
#include <utility>

#include "lowrank/core/rng.h"
#include "lowrank/lora/config.h"
#include "lowrank/lora/lora_pair.h"

namespace lowrank::lora {

// Sets p.A [r, in] and p.B [out, r] (f32, CPU) for p.kind from the frozen weight (f32 CPU
// [out, in]; read by PiSSA and OLoRA only, may be undefined otherwise). PiSSA / OLoRA also keep
// the pair in p.A_init / p.B_init and return the residual weight; otherwise an undefined tensor.
Tensor init_lora_pair(LoraPair& p, const LoraConfig& config, const Tensor& weight, Rng& rng);

// The pair as saved for the original base (above): p.A, p.B themselves without an initial pair.
std::pair<Tensor, Tensor> converted_pair(const LoraPair& p);
// The adapter_config.json values of a converted adapter: r, alpha and the patterns' values scaled.
LoraConfig converted_config(const LoraConfig& config);

}  // namespace lowrank::lora
