#include "lowrank/model/config.h"

#include <cmath>
#include <filesystem>
#include <limits>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/model/rope.h"

namespace lowrank::model {
namespace {

using nlohmann::json;

// Sizes beyond these are corrupt or hostile configs, refused before anything is sized by them:
// token ids are int32 (so no vocabulary, width or head count needs more), and products of two
// dims stay far inside int64.
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxLayers = 1 << 16;
constexpr int64_t kMaxHeadDim = 1 << 16;
// RoPE tables cover every position up to max_position_embeddings (forward.cpp builds them whole):
// 16M positions is above every released model (Llama 4 Scout: 10M).
constexpr int64_t kMaxPositions = 1 << 24;

// Reads an integer key; `required` keys that are missing (or null) are an Error naming the key.
int64_t get_int(const json& j, const std::string& key, const std::string& src,
                std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    throw error(src, ": missing required key \"", key, "\"");
  }
  if (!it->is_number_integer()) throw error(src, ": key \"", key, "\" must be an integer, got ", it->dump());
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw error(src, ": key \"", key, "\" is too large, got ", it->dump());
  return it->get<int64_t>();
}

std::string get_string(const json& j, const std::string& key, const std::string& src, const std::string& fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) throw error(src, ": key \"", key, "\" must be a string, got ", it->dump());
  return it->get<std::string>();
}

double get_double(const json& j, const std::string& key, const std::string& src, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw error(src, ": key \"", key, "\" must be a number, got ", it->dump());
  return it->get<double>();
}

// A norm's epsilon: under the square root with the variance, so a negative one gives NaN rows.
double get_norm_eps(const json& j, const std::string& key, const std::string& src, double fallback) {
  const double eps = get_double(j, key, src, fallback);
  if (!(eps >= 0) || !std::isfinite(eps)) throw error(src, ": \"", key, "\" must be a finite number >= 0, got ", eps);
  return eps;
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
      {"LlamaForCausalLM", Arch::Llama},   {"MistralForCausalLM", Arch::Mistral},
      {"Qwen2ForCausalLM", Arch::Qwen2},   {"Qwen3ForCausalLM", Arch::Qwen3},
      {"GPT2LMHeadModel", Arch::GPT2},     {"Gemma2ForCausalLM", Arch::Gemma2},
      {"Gemma3ForCausalLM", Arch::Gemma3}, {"Phi3ForCausalLM", Arch::Phi3}};
  static const std::pair<const char*, Arch> model_types[] = {
      {"llama", Arch::Llama},   {"mistral", Arch::Mistral},      {"qwen2", Arch::Qwen2}, {"qwen3", Arch::Qwen3},
      {"gpt2", Arch::GPT2},     {"gemma2", Arch::Gemma2},        {"gemma3_text", Arch::Gemma3},
      {"phi3", Arch::Phi3}};
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
    for (const auto& [n, a] : model_types)
      if (t == n) return a;
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

std::vector<double> get_factors(const json& j, const std::string& key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) throw error(src, ": longrope needs \"", key, "\" (a list of numbers)");
  std::vector<double> out;
  for (const auto& v : *it) {
    if (!v.is_number()) throw error(src, ": \"", key, "\" must hold numbers, got ", it->dump());
    out.push_back(v.get<double>());
  }
  return out;
}

// One RoPE parameter set: `params` is rope_parameters (5.x), a per-layer-type entry of it, or
// rope_scaling (4.x); `top` is the whole config, where 4.x keeps rope_theta and Phi-3 keeps
// original_max_position_embeddings.
RopeConfig parse_rope_params(const json& params, const json& top, const std::string& src, double default_theta) {
  RopeConfig r;
  r.theta = get_double(params, "rope_theta", src, get_double(top, "rope_theta", src, default_theta));
  // theta^(-2i/d) of a base <= 0 is NaN or infinite: every position's rotation would be garbage.
  if (!(r.theta > 0) || !std::isfinite(r.theta))
    throw error(src, ": \"rope_theta\" must be a positive number, got ", r.theta);
  std::string type = get_string(params, "rope_type", src, get_string(params, "type", src, "default"));
  if (type == "su") type = "longrope";  // Phi-3's first name for it
  if (type != "default" && type != "linear" && type != "llama3" && type != "yarn" && type != "longrope")
    throw error(src, ": unsupported rope_type \"", type, "\" (supported: default, linear, llama3, yarn, longrope)");
  r.type = type;
  // longrope without a factor keeps 0: max_position_embeddings / original, as transformers (rope.cpp)
  r.factor = get_double(params, "factor", src, type == "longrope" ? 0.0 : 1.0);
  if (type != "default" && !(r.factor > 0 || (type == "longrope" && r.factor == 0)))
    throw error(src, ": rope factor must be positive");
  r.low_freq_factor = get_double(params, "low_freq_factor", src, 1.0);
  r.high_freq_factor = get_double(params, "high_freq_factor", src, 4.0);
  r.original_max_position_embeddings = get_int(
      params, "original_max_position_embeddings", src,
      type == "longrope" ? get_int(top, "original_max_position_embeddings", src, int64_t{0}) : int64_t{0});
  r.attention_factor = get_opt_double(params, "attention_factor", src);
  r.beta_fast = get_opt_double(params, "beta_fast", src);
  r.beta_slow = get_opt_double(params, "beta_slow", src);
  r.mscale = get_opt_double(params, "mscale", src);
  r.mscale_all_dim = get_opt_double(params, "mscale_all_dim", src);
  r.truncate = get_bool(params, "truncate", src, true);
  if (type == "llama3" && r.original_max_position_embeddings <= 0)
    throw error(src, ": llama3 rope needs \"original_max_position_embeddings\"");
  // The medium band divides by high - low and the bands' wavelengths by each factor.
  if (type == "llama3" && !(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor))
    throw error(src, ": llama3 rope needs 0 < \"low_freq_factor\" < \"high_freq_factor\", got ", r.low_freq_factor,
                " and ", r.high_freq_factor);
  if (type == "longrope") {
    if (r.original_max_position_embeddings <= 0)
      throw error(src, ": longrope needs \"original_max_position_embeddings\"");
    r.short_factor = get_factors(params, "short_factor", src);
    r.long_factor = get_factors(params, "long_factor", src);
  }
  return r;
}

// rope_parameters (5.x) or rope_scaling (4.x), {} when neither is there (or both are null).
json rope_params_object(const json& j, const std::string& src) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    // Anything else would be silently read as the default RoPE: another model than the one meant.
    if (!it->is_object()) throw error(src, ": \"", key, "\" must be an object or null, got ", it->dump());
    return *it;
  }
  return json::object();
}

// Per-layer-type RoPE (5.x: {"full_attention": {...}, "sliding_attention": {...}}).
bool rope_per_layer_type(const json& params) {
  return params.contains("full_attention") || params.contains("sliding_attention");
}

RopeConfig parse_rope(const json& j, const std::string& src, double default_theta = 10000.0) {
  const json params = rope_params_object(j, src);
  if (rope_per_layer_type(params))
    throw error(src, ": RoPE parameters per layer type are only supported for Gemma 3");
  return parse_rope_params(params, j, src, default_theta);
}

double get_partial_rotary_factor(const json& j, const std::string& src) {
  const json params = rope_params_object(j, src);
  const double f = get_double(params, "partial_rotary_factor", src, get_double(j, "partial_rotary_factor", src, 1.0));
  if (!(f > 0 && f <= 1)) throw error(src, ": partial_rotary_factor must be in (0, 1], got ", f);
  return f;
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

void check_at_most(int64_t v, int64_t limit, const char* key, const std::string& src) {
  if (v > limit) throw error(src, ": \"", key, "\" is ", v, ", more than lowrank supports (", limit, "; corrupt config?)");
}

// Every size of the shape positive and within what can be allocated and indexed. Runs before
// anything is sized by the config (the layer list, RoPE tables), so that a hostile value is an
// error here rather than a huge allocation or an overflow later.
void check_shape(const ModelConfig& c, const std::string& src, bool gpt2) {
  const char* vocab = "vocab_size";
  const char* hidden = gpt2 ? "n_embd" : "hidden_size";
  const char* inter = gpt2 ? "n_inner" : "intermediate_size";
  const char* layers = gpt2 ? "n_layer" : "num_hidden_layers";
  const char* heads = gpt2 ? "n_head" : "num_attention_heads";
  const char* positions = gpt2 ? "n_positions" : "max_position_embeddings";
  for (auto [v, k] : {std::pair{c.vocab_size, vocab}, {c.hidden_size, hidden}, {c.intermediate_size, inter},
                      {c.num_layers, layers}, {c.num_heads, heads}, {c.num_kv_heads, "num_key_value_heads"},
                      {c.head_dim, "head_dim"}, {c.max_position_embeddings, positions}})
    check_positive(v, k, src);
  for (auto [v, k] : {std::pair{c.vocab_size, vocab}, {c.hidden_size, hidden}, {c.intermediate_size, inter},
                      {c.num_heads, heads}, {c.num_kv_heads, "num_key_value_heads"}})
    check_at_most(v, kMaxDim, k, src);
  check_at_most(c.num_layers, kMaxLayers, layers, src);
  check_at_most(c.head_dim, kMaxHeadDim, "head_dim", src);
  check_at_most(c.max_position_embeddings, kMaxPositions, positions, src);
}

// The RoPE a config describes must rotate every position by a finite angle with a finite scale:
// a tiny factor or base, beta_fast = 0, a zero LongRoPE factor or original context of 1 make
// NaN or infinite cos/sin tables, and every logit NaN.
void check_rope_finite(const ModelConfig& c, const RopeConfig& r, const std::string& src) {
  const float last = static_cast<float>(c.max_position_embeddings - 1);
  for (const bool long_factors : {false, true}) {
    if (long_factors && r.type != "longrope") break;
    const RopeFrequencies f = rope_frequencies(c, r, long_factors);
    bool finite = std::isfinite(f.attention_scaling) && std::isfinite(static_cast<float>(f.attention_scaling));
    for (const double inv : f.inv_freq)
      finite = finite && std::isfinite(static_cast<float>(inv)) && std::isfinite(last * static_cast<float>(inv));
    if (!finite)
      throw error(src, ": the RoPE parameters (rope_type \"", r.type, "\", rope_theta ", r.theta, ", factor ", r.factor,
                  ") give infinite or NaN rotation frequencies or scale");
  }
}

}  // namespace

int64_t ModelConfig::rotary_dim() const {
  // transformers: int(head_dim * partial_rotary_factor)
  return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
}

float ModelConfig::attention_scale() const {
  const double s = query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_dim);
  return static_cast<float>(1.0 / std::sqrt(s));
}

float ModelConfig::embedding_scale(DType dtype) const {
  if (!scale_embeddings) return 1.0f;
  const float s = static_cast<float>(std::sqrt(static_cast<double>(hidden_size)));
  if (dtype == DType::BF16) return bf16_to_f32(f32_to_bf16(s));
  if (dtype == DType::F16) return f16_to_f32(f32_to_f16(s));
  return s;
}

const RopeConfig& ModelConfig::rope_of_layer(int64_t layer) const {
  return sliding_rope && sliding_window[layer] > 0 ? *sliding_rope : rope;
}

std::string arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "LlamaForCausalLM";
    case Arch::Mistral: return "MistralForCausalLM";
    case Arch::Qwen2: return "Qwen2ForCausalLM";
    case Arch::Qwen3: return "Qwen3ForCausalLM";
    case Arch::GPT2: return "GPT2LMHeadModel";
    case Arch::Gemma2: return "Gemma2ForCausalLM";
    case Arch::Gemma3: return "Gemma3ForCausalLM";
    case Arch::Phi3: return "Phi3ForCausalLM";
  }
  return "?";
}

namespace {

void parse_gpt2(const json& j, const std::string& src, ModelConfig& c) {
  c.vocab_size = get_int(j, "vocab_size", src);
  c.hidden_size = get_int(j, "n_embd", src);
  c.num_layers = get_int(j, "n_layer", src);
  c.num_heads = get_int(j, "n_head", src);
  c.max_position_embeddings = get_int(j, "n_positions", src);
  check_positive(c.hidden_size, "n_embd", src);
  check_at_most(c.hidden_size, kMaxDim, "n_embd", src);
  c.intermediate_size = get_int(j, "n_inner", src, 4 * c.hidden_size);
  c.norm_eps = get_norm_eps(j, "layer_norm_epsilon", src, 1e-5);
  c.activation = parse_activation(get_string(j, "activation_function", src, "gelu_new"), src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, true);
  c.attention_bias = c.o_bias = c.mlp_bias = true;
  c.norm = NormKind::Layer;
  c.gated_mlp = false;
  c.fused_qkv = true;
  c.gpt2_layout = true;
  c.learned_positions = true;
  if (get_bool(j, "scale_attn_by_inverse_layer_idx", src, false) ||
      get_bool(j, "reorder_and_upcast_attn", src, false) || !get_bool(j, "scale_attn_weights", src, true))
    throw error(src, ": GPT-2 attention options scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn "
                     "and scale_attn_weights=false are not supported");
  check_positive(c.num_heads, "n_head", src);
  if (c.hidden_size % c.num_heads != 0)
    throw error(src, ": n_embd (", c.hidden_size, ") is not divisible by n_head (", c.num_heads, ")");
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  check_shape(c, src, /*gpt2=*/true);
  c.sliding_window.assign(c.num_layers, 0);
}

// The keys every RoPE decoder (Llama, Mistral, Qwen, Gemma, Phi-3) names the same way.
void parse_decoder_shape(const json& j, const std::string& src, ModelConfig& c) {
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
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, int64_t{2048});
  check_shape(c, src, /*gpt2=*/false);
  if (c.head_dim % 2 != 0) throw error(src, ": head_dim (", c.head_dim, ") must be even for RoPE");
  c.norm_eps = get_norm_eps(j, "rms_norm_eps", src, 1e-6);
  c.sliding_window.assign(c.num_layers, 0);
}

// Sliding-window attention on the layers layer_types marks "sliding_attention"; without
// layer_types, on the layers `default_sliding` picks.
template <class F>
void parse_layer_types(const json& j, const std::string& src, ModelConfig& c, int64_t window, F default_sliding) {
  if (auto lt = j.find("layer_types"); lt != j.end() && lt->is_array()) {
    if (static_cast<int64_t>(lt->size()) != c.num_layers)
      throw error(src, ": \"layer_types\" has ", lt->size(), " entries for ", c.num_layers, " layers");
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const json& t = (*lt)[l];
      if (t == "sliding_attention") c.sliding_window[l] = window;
      else if (t != "full_attention")
        throw error(src, ": unsupported layer type ", t.dump(), " (supported: full_attention, sliding_attention)");
    }
  } else {
    for (int64_t l = 0; l < c.num_layers; ++l)
      if (default_sliding(l)) c.sliding_window[l] = window;
  }
}

int64_t get_window(const json& j, const std::string& src, int64_t fallback) {
  const int64_t w = get_int(j, "sliding_window", src, fallback);
  if (w <= 0) throw error(src, ": \"sliding_window\" must be positive, got ", w);
  return w;
}

// A soft-capping value: a missing key takes the family's default, null turns it off.
double get_softcap(const json& j, const std::string& key, const std::string& src, double fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return 0;
  const double v = get_double(j, key, src, fallback);
  if (!(v > 0)) throw error(src, ": \"", key, "\" must be positive or null, got ", v);
  return v;
}

// Gemma 2 and 3 (text): (1 + w) RMSNorms, also after attention and after the MLP; gated GELU-tanh;
// embeddings scaled by √d; attention scale from query_pre_attn_scalar; final logit soft-capping.
// Defaults are transformers' Gemma2Config / Gemma3TextConfig ones.
void parse_gemma(const json& j, const std::string& src, ModelConfig& c) {
  const bool gemma3 = c.arch == Arch::Gemma3;
  c.norm = NormKind::RMSOnePlus;
  c.sandwich_norms = true;
  c.scale_embeddings = true;
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, true);
  c.attention_bias = c.o_bias = get_bool(j, "attention_bias", src, false);
  std::string act = "gelu_pytorch_tanh";
  for (const char* key : {"hidden_activation", "hidden_act"})
    if (j.contains(key) && j[key].is_string()) {
      act = j[key].get<std::string>();
      break;
    }
  c.activation = parse_activation(act, src);
  c.query_pre_attn_scalar = get_double(j, "query_pre_attn_scalar", src, 256.0);
  if (!(c.query_pre_attn_scalar > 0)) throw error(src, ": \"query_pre_attn_scalar\" must be positive");
  c.final_softcap = get_softcap(j, "final_logit_softcapping", src, gemma3 ? 0.0 : 30.0);
  // Gemma 3's attention never applies attn_logit_softcapping (transformers passes it to no kernel).
  if (!gemma3) c.attn_softcap = get_softcap(j, "attn_logit_softcapping", src, 50.0);
  if (get_bool(j, "use_bidirectional_attention", src, false))
    throw error(src, ": use_bidirectional_attention is not supported (lowrank trains causal language models)");
  const int64_t window = get_window(j, src, 4096);
  if (gemma3) {
    c.qk_norm = true;
    int64_t pattern = 6;
    for (const char* key : {"sliding_window_pattern", "_sliding_window_pattern"})
      if (j.contains(key) && j[key].is_number_integer()) pattern = j[key].get<int64_t>();
    if (pattern <= 0) throw error(src, ": \"sliding_window_pattern\" must be positive");
    parse_layer_types(j, src, c, window, [&](int64_t l) { return (l + 1) % pattern != 0; });
    // 5.x: one RoPE per layer type; 4.x: rope_theta (+ rope_scaling) for full attention and
    // rope_local_base_freq for the sliding layers.
    const json params = rope_params_object(j, src);
    if (rope_per_layer_type(params)) {
      for (const char* key : {"full_attention", "sliding_attention"})
        if (!params.contains(key) || !params[key].is_object())
          throw error(src, ": \"rope_parameters\" needs an object for \"", key, "\"");
      c.rope = parse_rope_params(params["full_attention"], json::object(), src, 1000000.0);
      c.sliding_rope = parse_rope_params(params["sliding_attention"], json::object(), src, 10000.0);
    } else {
      c.rope = parse_rope_params(params, j, src, 1000000.0);
      RopeConfig local;
      local.theta = get_double(j, "rope_local_base_freq", src, 10000.0);
      if (!(local.theta > 0)) throw error(src, ": \"rope_local_base_freq\" must be a positive number, got ", local.theta);
      c.sliding_rope = local;
    }
  } else {
    parse_layer_types(j, src, c, window, [](int64_t l) { return l % 2 == 0; });
    c.rope = parse_rope(j, src);
  }
}

// Phi-3: fused qkv_proj and gate_up_proj, partial rotary, LongRoPE.
void parse_phi3(const json& j, const std::string& src, ModelConfig& c) {
  c.fused_qkv = c.fused_gate_up = true;
  c.activation = parse_activation(get_string(j, "hidden_act", src, "silu"), src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  c.partial_rotary_factor = get_partial_rotary_factor(j, src);
  c.rope = parse_rope(j, src);
  if (j.contains("sliding_window") && !j["sliding_window"].is_null())
    c.sliding_window.assign(c.num_layers, get_window(j, src, 0));
}

// Llama, Mistral, Qwen2, Qwen3.
void parse_llama_like(const json& j, const std::string& src, ModelConfig& c) {
  c.activation = parse_activation(get_string(j, "hidden_act", src, "silu"), src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  c.rope = parse_rope(j, src);
  if (get_partial_rotary_factor(j, src) != 1.0)
    throw error(src, ": partial_rotary_factor other than 1 is not supported for ", arch_name(c.arch));
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
  // null or absent: no window; a value of another type must not silently mean full attention.
  const int64_t window = get_int(j, "sliding_window", src, int64_t{0});
  if (c.arch == Arch::Mistral) {
    c.sliding_window.assign(c.num_layers, window);
  } else if (c.arch != Arch::Llama) {
    if (j.contains("layer_types") && j["layer_types"].is_array())
      parse_layer_types(j, src, c, window, [](int64_t) { return false; });
    else if (get_bool(j, "use_sliding_window", src, false))
      throw error(src, ": use_sliding_window without layer_types is not supported");
  }
  for (int64_t w : c.sliding_window)
    if (w < 0) throw error(src, ": \"sliding_window\" must be positive");
}

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
    parse_gpt2(j, src, c);
    return c;
  }
  parse_decoder_shape(j, src, c);
  switch (c.arch) {
    case Arch::Gemma2:
    case Arch::Gemma3: parse_gemma(j, src, c); break;
    case Arch::Phi3: parse_phi3(j, src, c); break;
    default: parse_llama_like(j, src, c);
  }
  if (c.rotary_dim() < 2 || c.rotary_dim() % 2 != 0)
    throw error(src, ": head_dim (", c.head_dim, ") x partial_rotary_factor (", c.partial_rotary_factor,
                ") must give an even number of rotated dims");
  for (const RopeConfig* r : {&c.rope, c.sliding_rope ? &*c.sliding_rope : nullptr}) {
    if (!r || r->type != "longrope") continue;
    const size_t half = static_cast<size_t>(c.rotary_dim() / 2);
    if (r->short_factor.size() != half || r->long_factor.size() != half)
      throw error(src, ": longrope short_factor and long_factor need ", half, " entries (rotary dims / 2), got ",
                  r->short_factor.size(), " and ", r->long_factor.size());
  }
  for (const RopeConfig* r : {&c.rope, c.sliding_rope ? &*c.sliding_rope : nullptr})
    if (r) check_rope_finite(c, *r, src);
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
