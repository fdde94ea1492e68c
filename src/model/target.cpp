#include "lowrank/model/target.h"

namespace lowrank {

std::string_view target_short_name(Target t) {
  switch (t) {
    case Target::Q: return "q_proj";
    case Target::K: return "k_proj";
    case Target::V: return "v_proj";
    case Target::O: return "o_proj";
    case Target::Gate: return "gate_proj";
    case Target::Up: return "up_proj";
    case Target::Down: return "down_proj";
    case Target::CAttn: return "c_attn";
    case Target::CProj: return "c_proj";
    case Target::CFc: return "c_fc";
    case Target::MlpCProj: return "c_proj";
    case Target::QKV: return "qkv_proj";
    case Target::GateUp: return "gate_up_proj";
    case Target::Embed: return "embed_tokens";
    case Target::LmHead: return "lm_head";
    case Target::Count: break;
  }
  return "?";
}

std::string_view target_module_path(Target t) {
  switch (t) {
    case Target::Q: return "self_attn.q_proj";
    case Target::K: return "self_attn.k_proj";
    case Target::V: return "self_attn.v_proj";
    case Target::O: return "self_attn.o_proj";
    case Target::Gate: return "mlp.gate_proj";
    case Target::Up: return "mlp.up_proj";
    case Target::Down: return "mlp.down_proj";
    case Target::CAttn: return "attn.c_attn";
    case Target::CProj: return "attn.c_proj";
    case Target::CFc: return "mlp.c_fc";
    case Target::MlpCProj: return "mlp.c_proj";
    case Target::QKV: return "self_attn.qkv_proj";
    case Target::GateUp: return "mlp.gate_up_proj";
    case Target::Embed: return "embed_tokens";
    case Target::LmHead: return "lm_head";
    case Target::Count: break;
  }
  return "?";
}

}  // namespace lowrank
