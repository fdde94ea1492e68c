#pragma once
// ModelConfig: the architecture read from a Hugging Face config.json, in both transformers 4.x
// style (rope_theta, rope_scaling, torch_dtype) and 5.x style (rope_parameters, dtype). Unknown keys
// are ignored; a missing required key is an Error naming it.
// A family is its config parsing plus a row of feature switches (norm kind and placement, fused
// projections, positions, attention scale, soft-capping, ...): forward, backward, loading, LoRA
// targets and export read the switches, never the family.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/core/dtype.h"

namespace lowrank::model {

enum class Arch { Llama, Mistral, Qwen2, Qwen3, GPT2, Gemma2, Gemma3, Phi3 };
std::string arch_name(Arch a);  // the transformers class name, e.g. "LlamaForCausalLM"

enum class Activation { SiLU, GeluTanh, GeluErf, ReLU };

// How a norm scales its normalised input x̂.
enum class NormKind {
  RMS,         // x̂ · w                      (Llama, Qwen, Mistral, Phi-3)
  RMSOnePlus,  // x̂ · (1 + w)                (Gemma: weights are stored centred on 0)
  Layer,       // (x - mean) / std · w + b  (GPT-2)
};

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn | longrope
  double theta = 10000.0;
  double factor = 1.0;            // longrope: 0 when unset (max_position_embeddings / original)
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, yarn (0: max_position_embeddings), longrope
  std::optional<double> attention_factor;        // yarn, longrope
  std::optional<double> beta_fast, beta_slow, mscale, mscale_all_dim;  // yarn
  bool truncate = true;  // yarn
  std::vector<double> short_factor, long_factor;  // longrope: per frequency, [rotary_dim / 2]
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q, k, v (and o for Llama/Mistral) biases
  bool o_bias = false;          // separate because Qwen2 has q/k/v bias but no o bias
  bool mlp_bias = false;
  bool qk_norm = false;         // Qwen3, Gemma 3: a norm over head_dim on q and k before RoPE
  Activation activation = Activation::SiLU;
  // Feature switches (the defaults are Llama's).
  NormKind norm = NormKind::RMS;
  bool sandwich_norms = false;  // Gemma 2/3: the attention and MLP outputs are normed again before the residual add
  bool gated_mlp = true;        // down(act(gate) * up); false: down(act(up)) (GPT-2)
  bool fused_qkv = false;       // one projection [q_dim + 2 kv_dim, d] split into q, k, v (GPT-2, Phi-3)
  bool fused_gate_up = false;   // one projection [2 I, d] split into gate, up (Phi-3)
  bool gpt2_layout = false;     // GPT-2 checkpoint names (h.N.attn.c_attn, ...) and Conv1D weights [in, out]
  bool learned_positions = false;  // a position embedding table (GPT-2) instead of RoPE
  double partial_rotary_factor = 1.0;  // RoPE rotates the first head_dim * factor dims of each head (Phi-3)
  double query_pre_attn_scalar = 0;    // attention scale 1/sqrt(this) (Gemma); 0: 1/sqrt(head_dim)
  double attn_softcap = 0;      // scores → cap · tanh(scores / cap) before the softmax (Gemma 2); 0: none
  double final_softcap = 0;     // the same on the output logits (Gemma 2/3); 0: none
  bool scale_embeddings = false;  // embeddings multiplied by √hidden_size (Gemma)
  RopeConfig rope;  // every layer's (Gemma 3: the full-attention layers'); unused with learned positions
  std::optional<RopeConfig> sliding_rope;  // Gemma 3: the sliding-window layers' own RoPE (local theta)
  std::vector<int64_t> sliding_window;  // per layer; 0 = full causal attention
  DType dtype = DType::F32;           // dtype the checkpoint declares
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // from config.json, overridden by generation_config.json

  // Parses a config.json object; `source` names the file in errors.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  // Reads <dir>/config.json and, when present, <dir>/generation_config.json (eos ids).
  static ModelConfig load(const std::string& dir);

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Dims of each head that RoPE rotates (even; head_dim unless partial_rotary_factor < 1).
  int64_t rotary_dim() const;
  float attention_scale() const;
  // What embeddings of `dtype` are multiplied by: 1, or √hidden_size rounded to that dtype as
  // transformers holds it (bf16: √3072 = 55.43 → 55.5).
  float embedding_scale(DType dtype) const;
  // The RoPE of `layer` (Gemma 3's sliding layers have their own).
  const RopeConfig& rope_of_layer(int64_t layer) const;
};

}  // namespace lowrank::model
