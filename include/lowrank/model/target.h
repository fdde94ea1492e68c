#pragma once
// The projections of a model (what LoRA can adapt), part of the model description. An enum, not
// a string: module names are mapped once, at load.
#include <optional>
#include <string>
#include <string_view>

namespace lowrank {

enum class Target : uint8_t {
  Q, K, V, O, Gate, Up, Down,  // Llama family
  CAttn, CProj, CFc, MlpCProj, // GPT-2 (Conv1D); MlpCProj is mlp.c_proj, CProj is attn.c_proj
  QKV, GateUp,                 // Phi-3's fused self_attn.qkv_proj and mlp.gate_up_proj
  Embed, LmHead,
  Count
};
constexpr int kTargetCount = static_cast<int>(Target::Count);

// Short module name as PEFT users write it: "q_proj", "c_attn", "embed_tokens", "lm_head", ...
std::string_view target_short_name(Target t);
// Module path inside its decoder layer: "self_attn.q_proj", "attn.c_attn", "mlp.c_proj", ...
std::string_view target_module_path(Target t);

}  // namespace lowrank
