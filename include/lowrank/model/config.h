#pragma once
// ModelConfig: the architecture hyper-parameters read from a Hugging Face config.json, in both
// transformers 4.x style (rope_theta, rope_scaling, torch_dtype) and 5.x style (rope_parameters,
// dtype). Unknown keys are ignored; a missing required key is an Error naming it.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/core/dtype.h"

namespace lowrank::model {

enum class Arch { Llama, Mistral, Qwen2, Qwen3, GPT2 };
std::string arch_name(Arch a);  // the transformers class name, e.g. "LlamaForCausalLM"

enum class Activation { SiLU, GeluTanh, GeluErf, ReLU };

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;  // llama3, yarn (0: max_position_embeddings)
  std::optional<double> attention_factor;        // yarn
  std::optional<double> beta_fast, beta_slow, mscale, mscale_all_dim;  // yarn
  bool truncate = true;  // yarn
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
  bool qk_norm = false;         // Qwen3: RMSNorm over head_dim on q and k before RoPE
  Activation activation = Activation::SiLU;
  RopeConfig rope;                    // unused for GPT-2 (learned positions)
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
  bool is_gpt2() const { return arch == Arch::GPT2; }
};

}  // namespace lowrank::model
