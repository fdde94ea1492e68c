#include "lowrank/model/config.h"

#include <filesystem>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"

namespace lowrank::model {
namespace {

using nlohmann::json;

// Reads an integer key; `required` keys that are missing (or null) are an Error naming the key.
int64_t get_int(const json& j, const std::string& key, const std::string& src,
                std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    throw error(src, ": missing required key \"", key, "\"");
  }
  if (!it->is_number_integer()) throw error(src, ": key \"", key, "\" must be an integer, got ", it->dump());
  return it->get<int64_t>();
}

double get_double(const json& j, const std::string& key, const std::string& src, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw error(src, ": key \"", key, "\" must be a number, got ", it->dump());
  return it->get<double>();
}

std::optional<double> get_opt_double(const json& j, const std::string& key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw error(src, ": key \"", key, "\" must be a number, got ", it->dump());
  return it->get<double>();
}

bool get_bool(const json& j, const std::string& key, const std::string& src, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw error(src, ": key \"", key, "\" must be true or false, got ", it->dump());
  return it->get<bool>();
}

std::vector<int64_t> get_ids(const json& j, const std::string& key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  std::vector<int64_t> ids;
  if (it->is_array()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer()) throw error(src, ": \"", key, "\" must hold integers, got ", it->dump());
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  throw error(src, ": \"", key, "\" must be an integer or a list of integers, got ", it->dump());
}

Arch parse_arch(const json& j, const std::string& src) {
  static const std::pair<const char*, Arch> known[] = {
      {"LlamaForCausalLM", Arch::Llama},  {"MistralForCausalLM", Arch::Mistral},
      {"Qwen2ForCausalLM", Arch::Qwen2},  {"Qwen3ForCausalLM", Arch::Qwen3},
      {"GPT2LMHeadModel", Arch::GPT2}};
  std::string supported;
  for (const auto& [name, a] : known) supported += std::string(supported.empty() ? "" : ", ") + name;
  auto it = j.find("architectures");
  if (it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    const std::string name = (*it)[0].get<std::string>();
    for (const auto& [n, a] : known)
      if (name == n) return a;
    throw error(src, ": unsupported architecture \"", name, "\" (supported: ", supported, ")");
  }
  // Fall back on model_type when "architectures" is absent.
  auto mt = j.find("model_type");
  if (mt != j.end() && mt->is_string()) {
    const std::string t = mt->get<std::string>();
    if (t == "llama") return Arch::Llama;
    if (t == "mistral") return Arch::Mistral;
    if (t == "qwen2") return Arch::Qwen2;
    if (t == "qwen3") return Arch::Qwen3;
    if (t == "gpt2") return Arch::GPT2;
    throw error(src, ": unsupported model_type \"", t, "\" (supported: ", supported, ")");
  }
  throw error(src, ": missing required key \"architectures\" (supported: ", supported, ")");
}

Activation parse_activation(const std::string& name, const std::string& src) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::GeluTanh;
  if (name == "gelu") return Activation::GeluErf;
  if (name == "relu") return Activation::ReLU;
  throw error(src, ": unsupported activation \"", name, "\" (supported: silu, gelu, gelu_new, gelu_pytorch_tanh, relu)");
}

RopeConfig parse_rope(const json& j, const std::string& src) {
  RopeConfig r;
  // 5.x: rope_parameters holds everything (rope_theta inside); 4.x: rope_theta + rope_scaling.
  json params = json::object();
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) params = *it;
  else if (auto sc = j.find("rope_scaling"); sc != j.end() && sc->is_object()) params = *sc;
  r.theta = get_double(params, "rope_theta", src, get_double(j, "rope_theta", src, 10000.0));
  std::string type = "default";
  if (auto t = params.find("rope_type"); t != params.end() && t->is_string()) type = t->get<std::string>();
  else if (auto t2 = params.find("type"); t2 != params.end() && t2->is_string()) type = t2->get<std::string>();
  if (type != "default" && type != "linear" && type != "llama3" && type != "yarn")
    throw error(src, ": unsupported rope_type \"", type, "\" (supported: default, linear, llama3, yarn)");
  r.type = type;
  r.factor = get_double(params, "factor", src, 1.0);
  if (type != "default" && !(r.factor > 0)) throw error(src, ": rope factor must be positive");
  r.low_freq_factor = get_double(params, "low_freq_factor", src, 1.0);
  r.high_freq_factor = get_double(params, "high_freq_factor", src, 4.0);
  r.original_max_position_embeddings =
      get_int(params, "original_max_position_embeddings", src, int64_t{0});
  r.attention_factor = get_opt_double(params, "attention_factor", src);
  r.beta_fast = get_opt_double(params, "beta_fast", src);
  r.beta_slow = get_opt_double(params, "beta_slow", src);
  r.mscale = get_opt_double(params, "mscale", src);
  r.mscale_all_dim = get_opt_double(params, "mscale_all_dim", src);
  r.truncate = get_bool(params, "truncate", src, true);
  if (type == "llama3" && r.original_max_position_embeddings <= 0)
    throw error(src, ": llama3 rope needs \"original_max_position_embeddings\"");
  if (get_double(params, "partial_rotary_factor", src, get_double(j, "partial_rotary_factor", src, 1.0)) != 1.0)
    throw error(src, ": partial_rotary_factor other than 1 is not supported");
  return r;
}

DType parse_config_dtype(const json& j) {
  for (const char* key : {"dtype", "torch_dtype"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string()) {
      if (auto d = parse_user_dtype(it->get<std::string>())) return *d;
    }
  }
  return DType::F32;
}

void check_positive(int64_t v, const char* key, const std::string& src) {
  if (v <= 0) throw error(src, ": \"", key, "\" must be positive, got ", v);
}

}  // namespace

std::string arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "LlamaForCausalLM";
    case Arch::Mistral: return "MistralForCausalLM";
    case Arch::Qwen2: return "Qwen2ForCausalLM";
    case Arch::Qwen3: return "Qwen3ForCausalLM";
    case Arch::GPT2: return "GPT2LMHeadModel";
  }
  return "?";
}

namespace {

ModelConfig parse_model_config(const json& j, const std::string& src) {
  if (!j.is_object()) throw error(src, ": expected a JSON object");
  ModelConfig c;
  c.arch = parse_arch(j, src);
  c.dtype = parse_config_dtype(j);
  c.bos_token_id = j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()
                       ? std::optional<int64_t>(j["bos_token_id"].get<int64_t>())
                       : std::nullopt;
  c.eos_token_ids = get_ids(j, "eos_token_id", src);
  if (c.arch == Arch::GPT2) {
    c.vocab_size = get_int(j, "vocab_size", src);
    c.hidden_size = get_int(j, "n_embd", src);
    c.num_layers = get_int(j, "n_layer", src);
    c.num_heads = get_int(j, "n_head", src);
    c.max_position_embeddings = get_int(j, "n_positions", src);
    check_positive(c.hidden_size, "n_embd", src);
    c.intermediate_size = get_int(j, "n_inner", src, 4 * c.hidden_size);
    c.norm_eps = get_double(j, "layer_norm_epsilon", src, 1e-5);
    c.activation = parse_activation(j.value("activation_function", std::string("gelu_new")), src);
    c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, true);
    c.attention_bias = c.o_bias = c.mlp_bias = true;
    if (get_bool(j, "scale_attn_by_inverse_layer_idx", src, false) ||
        get_bool(j, "reorder_and_upcast_attn", src, false) || !get_bool(j, "scale_attn_weights", src, true))
      throw error(src, ": GPT-2 attention options scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn "
                       "and scale_attn_weights=false are not supported");
    check_positive(c.num_heads, "n_head", src);
    if (c.hidden_size % c.num_heads != 0)
      throw error(src, ": n_embd (", c.hidden_size, ") is not divisible by n_head (", c.num_heads, ")");
    c.num_kv_heads = c.num_heads;
    c.head_dim = c.hidden_size / c.num_heads;
    check_positive(c.vocab_size, "vocab_size", src);
    check_positive(c.num_layers, "n_layer", src);
    check_positive(c.intermediate_size, "n_inner", src);
    check_positive(c.max_position_embeddings, "n_positions", src);
    c.sliding_window.assign(c.num_layers, 0);
    return c;
  }
  c.vocab_size = get_int(j, "vocab_size", src);
  c.hidden_size = get_int(j, "hidden_size", src);
  c.intermediate_size = get_int(j, "intermediate_size", src);
  c.num_layers = get_int(j, "num_hidden_layers", src);
  c.num_heads = get_int(j, "num_attention_heads", src);
  for (auto [v, k] : {std::pair{c.vocab_size, "vocab_size"}, {c.hidden_size, "hidden_size"},
                      {c.intermediate_size, "intermediate_size"}, {c.num_layers, "num_hidden_layers"},
                      {c.num_heads, "num_attention_heads"}})
    check_positive(v, k, src);
  c.num_kv_heads = get_int(j, "num_key_value_heads", src, c.num_heads);
  check_positive(c.num_kv_heads, "num_key_value_heads", src);
  if (c.num_heads % c.num_kv_heads != 0)
    throw error(src, ": num_attention_heads (", c.num_heads, ") is not divisible by num_key_value_heads (",
                c.num_kv_heads, ")");
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = get_int(j, "head_dim", src);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      throw error(src, ": hidden_size (", c.hidden_size, ") is not divisible by num_attention_heads (",
                  c.num_heads, ") and no head_dim is given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  check_positive(c.head_dim, "head_dim", src);
  if (c.head_dim % 2 != 0) throw error(src, ": head_dim (", c.head_dim, ") must be even for RoPE");
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, int64_t{2048});
  c.norm_eps = get_double(j, "rms_norm_eps", src, 1e-6);
  c.activation = parse_activation(j.value("hidden_act", std::string("silu")), src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  c.rope = parse_rope(j, src);
  switch (c.arch) {
    case Arch::Qwen2:
      c.attention_bias = true;  // Qwen2 always has q/k/v biases and none on o_proj
      break;
    case Arch::Qwen3:
      c.attention_bias = get_bool(j, "attention_bias", src, false);
      c.qk_norm = true;
      break;
    default:
      c.attention_bias = c.o_bias = get_bool(j, "attention_bias", src, false);
      c.mlp_bias = get_bool(j, "mlp_bias", src, false);
  }
  if (c.arch == Arch::Qwen3) c.o_bias = c.attention_bias;
  // Sliding-window attention: Mistral applies it to every layer when set; Qwen uses layer_types.
  const int64_t window = j.contains("sliding_window") && j["sliding_window"].is_number_integer()
                             ? j["sliding_window"].get<int64_t>() : 0;
  c.sliding_window.assign(c.num_layers, 0);
  if (c.arch == Arch::Mistral || c.arch == Arch::Llama) {
    if (c.arch == Arch::Mistral) c.sliding_window.assign(c.num_layers, window);
  } else if (auto lt = j.find("layer_types"); lt != j.end() && lt->is_array()) {
    if (static_cast<int64_t>(lt->size()) != c.num_layers)
      throw error(src, ": \"layer_types\" has ", lt->size(), " entries for ", c.num_layers, " layers");
    for (int64_t l = 0; l < c.num_layers; ++l)
      if ((*lt)[l] == "sliding_attention") c.sliding_window[l] = window;
  } else if (get_bool(j, "use_sliding_window", src, false)) {
    throw error(src, ": use_sliding_window without layer_types is not supported");
  }
  for (int64_t w : c.sliding_window)
    if (w < 0) throw error(src, ": \"sliding_window\" must be positive");
  return c;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  try {
    return parse_model_config(j, src);
  } catch (const nlohmann::json::exception& e) {  // a value of another type than the key needs
    throw error(src, ": ", io::json_error_text(e));
  }
}

ModelConfig ModelConfig::load(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  if (!io::file_exists(path)) throw error(dir, ": no config.json (is this a Hugging Face model folder?)");
  ModelConfig c = from_json(io::read_json(path), path);
  const std::string gen = (std::filesystem::path(dir) / "generation_config.json").string();
  if (io::file_exists(gen)) {
    auto g = io::read_json(gen);
    if (g.is_object()) {
      auto ids = get_ids(g, "eos_token_id", gen);
      if (!ids.empty()) c.eos_token_ids = ids;
    }
  }
  return c;
}

}  // namespace lowrank::model
