// HF model → GGUF, following llama.cpp's convert_hf_to_gguf.py (conversion/llama.py, qwen.py,
// gemma.py, phi.py, gpt2.py) and the keys its loader reads (src/models/<arch>.cpp).
#include "lowrank/model/gguf_export.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "lowrank/core/error.h"
#include "lowrank/tokenizer/gguf_vocab.h"

namespace lowrank::model {
namespace {

using io::GgufValue;

bool is_gemma(const ModelConfig& c) { return c.arch == Arch::Gemma2 || c.arch == Arch::Gemma3; }

// llama.cpp's attention scale: 1/sqrt(head_dim), except for the layer counts it takes for the 27B
// Gemmas (46 layers: Gemma 2, 62: Gemma 3), where it is 1/sqrt(hidden / heads).
double llamacpp_query_scale(const ModelConfig& c) {
  const bool is_27b = (c.arch == Arch::Gemma2 && c.num_layers == 46) || (c.arch == Arch::Gemma3 && c.num_layers == 62);
  const double d = is_27b ? static_cast<double>(c.hidden_size / c.num_heads) : static_cast<double>(c.head_dim);
  return 1.0 / std::sqrt(d);
}

// What the queries must be multiplied by so that llama.cpp's scale gives transformers' scores.
float gemma_query_factor(const ModelConfig& c) {
  return static_cast<float>(static_cast<double>(c.attention_scale()) / llamacpp_query_scale(c));
}

// A block tensor's name after "model.layers.N." (Llama-family names).
std::optional<std::string> block_name(const ModelConfig& c, const std::string& rest) {
  static const std::map<std::string, std::string> common = {
      {"self_attn.q_proj", "attn_q"},          {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},          {"self_attn.o_proj", "attn_output"},
      {"self_attn.qkv_proj", "attn_qkv"},      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},     {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},               {"mlp.down_proj", "ffn_down"},
      {"mlp.gate_up_proj", "ffn_up"},          {"input_layernorm", "attn_norm"},
      {"pre_feedforward_layernorm", "ffn_norm"}, {"post_feedforward_layernorm", "post_ffw_norm"},
  };
  const size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return std::nullopt;
  const std::string module = rest.substr(0, dot), suffix = rest.substr(dot);
  if (module == "post_attention_layernorm") return std::string(is_gemma(c) ? "post_attention_norm" : "ffn_norm") + suffix;
  const auto it = common.find(module);
  if (it == common.end()) return std::nullopt;
  return it->second + suffix;
}

// GPT-2: a name after "h.N.".
std::optional<std::string> gpt2_block_name(const std::string& rest) {
  static const std::map<std::string, std::string> names = {
      {"ln_1", "attn_norm"}, {"attn.c_attn", "attn_qkv"}, {"attn.c_proj", "attn_output"},
      {"ln_2", "ffn_norm"},  {"mlp.c_fc", "ffn_up"},      {"mlp.c_proj", "ffn_down"},
  };
  const size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return std::nullopt;
  const auto it = names.find(rest.substr(0, dot));
  if (it == names.end()) return std::nullopt;
  return it->second + rest.substr(dot);
}

void set_u32(io::GgufWriter& w, const std::string& key, int64_t v) { w.set(key, GgufValue::u32(static_cast<uint32_t>(v))); }
void set_f32(io::GgufWriter& w, const std::string& key, double v) { w.set(key, GgufValue::f32(static_cast<float>(v))); }

// The sliding-window layout llama.cpp expresses: every layer il with il % period < period - 1 is
// windowed, all with one window. Returns that period, or 0 when the model has no windowed layer.
int64_t sliding_period(const ModelConfig& c) {
  std::set<int64_t> windows;
  for (int64_t w : c.sliding_window)
    if (w > 0) windows.insert(w);
  if (windows.empty()) return 0;
  if (windows.size() > 1) throw error("layers with different sliding windows cannot be written to GGUF");
  for (int64_t p = 1; p <= c.num_layers + 1; ++p) {
    bool same = true;
    for (int64_t il = 0; il < c.num_layers && same; ++il)
      same = (c.sliding_window[il] > 0) == (il % p < p - 1);
    if (same) return p;
  }
  throw error("the model's pattern of sliding-window layers is not one llama.cpp can express (every layer il with "
              "il % period < period - 1)");
}

// llama3 RoPE as llama.cpp takes it: a divisor per frequency (conversion/llama.py's rope_freqs).
Tensor llama3_rope_factors(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  const int64_t dim = c.head_dim;
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
  std::vector<float> factors;
  for (int64_t i = 0; i < dim; i += 2) {
    // float32, as torch computes it there
    const float freq = 1.0f / std::pow(static_cast<float>(r.theta), static_cast<float>(i) / static_cast<float>(dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < high_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(static_cast<float>(r.factor));
    } else {
      const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      factors.push_back(static_cast<float>(1 / ((1 - smooth) / r.factor + smooth)));
    }
  }
  return Tensor::from_vector(factors, {static_cast<int64_t>(factors.size())});
}

// transformers' LongRoPE attention factor (the cos/sin scaling), which llama.cpp multiplies in.
double longrope_attention_factor(const ModelConfig& c) {
  const RopeConfig& r = c.rope;
  if (r.attention_factor) return *r.attention_factor;
  const double original = static_cast<double>(r.original_max_position_embeddings);
  const double scale = r.factor > 0 ? r.factor : static_cast<double>(c.max_position_embeddings) / original;
  return scale <= 1.0 ? 1.0 : std::sqrt(1 + std::log(scale) / std::log(original));
}

// The architecture's hyperparameter keys. Returns the warnings (what llama.cpp computes otherwise).
std::vector<std::string> set_arch_keys(io::GgufWriter& w, const ModelConfig& c) {
  const std::string a = gguf_arch_name(c);
  std::vector<std::string> warnings;
  const int64_t context = c.max_position_embeddings;  // GPT-2: n_positions, the rows of its position table
  set_u32(w, a + ".block_count", c.num_layers);
  set_u32(w, a + ".context_length", context);
  set_u32(w, a + ".embedding_length", c.hidden_size);
  set_u32(w, a + ".feed_forward_length", c.intermediate_size);
  set_u32(w, a + ".attention.head_count", c.num_heads);
  set_u32(w, a + ".attention.head_count_kv", c.num_kv_heads);
  if (c.norm == NormKind::Layer) {
    set_f32(w, a + ".attention.layer_norm_epsilon", c.norm_eps);
    return warnings;  // GPT-2: learned positions, nothing more
  }
  set_f32(w, a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  set_u32(w, a + ".attention.key_length", c.head_dim);
  set_u32(w, a + ".attention.value_length", c.head_dim);
  set_u32(w, a + ".rope.dimension_count", c.rotary_dim());
  set_f32(w, a + ".rope.freq_base", c.rope.theta);
  if (c.arch == Arch::Llama || c.arch == Arch::Mistral) set_u32(w, a + ".vocab_size", c.vocab_size);

  const RopeConfig& r = c.rope;
  if (r.type == "linear") {
    w.set(a + ".rope.scaling.type", GgufValue::string("linear"));
    set_f32(w, a + ".rope.scaling.factor", r.factor);
  } else if (r.type == "yarn") {
    w.set(a + ".rope.scaling.type", GgufValue::string("yarn"));
    set_f32(w, a + ".rope.scaling.factor", r.factor);
    set_u32(w, a + ".rope.scaling.original_context_length",
            r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : c.max_position_embeddings);
    if (r.attention_factor) set_f32(w, a + ".rope.scaling.yarn_attn_factor", *r.attention_factor);
    if (r.beta_fast) set_f32(w, a + ".rope.scaling.yarn_beta_fast", *r.beta_fast);
    if (r.beta_slow) set_f32(w, a + ".rope.scaling.yarn_beta_slow", *r.beta_slow);
  } else if (r.type == "llama3") {
    if (a != "llama") throw error("llama3 RoPE scaling on ", arch_name(c.arch), " has no GGUF form");
  } else if (r.type == "longrope") {
    if (c.arch != Arch::Phi3) throw error("LongRoPE on ", arch_name(c.arch), " has no GGUF form");
  } else if (r.type != "default") {
    throw error("RoPE type '", r.type, "' has no GGUF form");
  }

  const int64_t period = sliding_period(c);
  if (is_gemma(c)) {
    if (c.attn_softcap > 0) set_f32(w, a + ".attn_logit_softcapping", c.attn_softcap);
    if (c.final_softcap > 0) set_f32(w, a + ".final_logit_softcapping", c.final_softcap);
    if (c.arch == Arch::Gemma2 && c.attn_softcap <= 0)
      throw error("Gemma 2 without attention soft-capping: llama.cpp always applies it");
    if (c.arch == Arch::Gemma2 && c.final_softcap <= 0)
      throw error("Gemma 2 without final soft-capping: llama.cpp always applies it");
    if (period > 0) {
      set_u32(w, a + ".attention.sliding_window", *std::max_element(c.sliding_window.begin(), c.sliding_window.end()));
      if (period != (c.arch == Arch::Gemma2 ? 2 : 6)) set_u32(w, a + ".attention.sliding_window_pattern", period);
    } else if (c.arch == Arch::Gemma2) {
      set_u32(w, a + ".attention.sliding_window", context);  // llama.cpp always windows Gemma 2: make it the context
    }
    if (c.sliding_rope) {
      if (c.sliding_rope->type != "default")
        throw error("RoPE scaling on the sliding-window layers has no GGUF form");
      set_f32(w, a + ".rope.freq_base_swa", c.sliding_rope->theta);
    }
  } else if (period > 0) {
    const int64_t window = *std::max_element(c.sliding_window.begin(), c.sliding_window.end());
    warnings.push_back("llama.cpp's " + a + " has no sliding-window attention: positions beyond " +
                       std::to_string(window) + " attend to the whole context, unlike transformers");
  }
  if (c.arch == Arch::Phi3) {
    set_u32(w, a + ".rope.scaling.original_context_length",
            r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : c.max_position_embeddings);
    set_u32(w, a + ".attention.sliding_window", 0);
    if (r.type == "longrope") {
      set_f32(w, a + ".rope.scaling.attn_factor", longrope_attention_factor(c));
      warnings.push_back("LongRoPE: llama.cpp picks the long factors by the context size it is run with (longer than " +
                         std::to_string(r.original_max_position_embeddings) +
                         "), transformers by each sequence's length");
    }
  }
  return warnings;
}

}  // namespace

GgufOutType parse_gguf_outtype(const std::string& name) {
  if (name == "f32") return GgufOutType::F32;
  if (name == "f16") return GgufOutType::F16;
  if (name == "bf16") return GgufOutType::BF16;
  if (name == "q8_0") return GgufOutType::Q8_0;
  throw error("--outtype must be f32, f16, bf16 or q8_0, got '", name, "'");
}

std::string gguf_outtype_name(GgufOutType t) {
  switch (t) {
    case GgufOutType::F32: return "f32";
    case GgufOutType::F16: return "f16";
    case GgufOutType::BF16: return "bf16";
    case GgufOutType::Q8_0: return "q8_0";
  }
  return "?";
}

io::GgmlType gguf_tensor_type(GgufOutType t, int rank, int64_t row, bool keep_f32) {
  if (keep_f32 || rank <= 1) return io::GgmlType::F32;
  switch (t) {
    case GgufOutType::F32: return io::GgmlType::F32;
    case GgufOutType::F16: return io::GgmlType::F16;
    case GgufOutType::BF16: return io::GgmlType::BF16;
    case GgufOutType::Q8_0: return row % 32 == 0 ? io::GgmlType::Q8_0 : io::GgmlType::F16;
  }
  return io::GgmlType::F32;
}

uint32_t gguf_file_type(GgufOutType t) {
  switch (t) {
    case GgufOutType::F32: return 0;
    case GgufOutType::F16: return 1;
    case GgufOutType::Q8_0: return 7;
    case GgufOutType::BF16: return 32;
  }
  return 0;
}

std::string gguf_arch_name(const ModelConfig& c) {
  switch (c.arch) {
    case Arch::Llama: case Arch::Mistral: return "llama";
    case Arch::Qwen2: return "qwen2";
    case Arch::Qwen3: return "qwen3";
    case Arch::GPT2: return "gpt2";
    case Arch::Gemma2: return "gemma2";
    case Arch::Gemma3: return "gemma3";
    case Arch::Phi3: return "phi3";
  }
  return "?";
}

std::optional<GgufTensorPlan> gguf_tensor_plan(const ModelConfig& c, const std::string& hf_name) {
  GgufTensorPlan plan;
  std::string name = hf_name;
  if (c.gpt2_layout) {
    if (name.rfind("transformer.", 0) == 0) name = name.substr(12);
    if (name == "wte.weight") plan.name = "token_embd.weight";
    else if (name == "wpe.weight") plan.name = "position_embd.weight", plan.keep_f32 = true;
    else if (name == "ln_f.weight" || name == "ln_f.bias") plan.name = "output_norm" + name.substr(4);
    else if (name == "lm_head.weight") plan.name = "output.weight";
    else if (name.rfind("h.", 0) == 0) {
      const size_t dot = name.find('.', 2);
      const auto rest = dot == std::string::npos ? std::nullopt : gpt2_block_name(name.substr(dot + 1));
      if (!rest) throw error("no GGUF name for tensor '", hf_name, "'");
      plan.name = "blk." + name.substr(2, dot - 2) + "." + *rest;
    } else {
      throw error("no GGUF name for tensor '", hf_name, "'");
    }
  } else if (name == "model.embed_tokens.weight") {
    plan.name = "token_embd.weight";
  } else if (name == "model.norm.weight") {
    plan.name = "output_norm.weight";
  } else if (name == "lm_head.weight") {
    if (c.arch == Arch::Gemma2) return std::nullopt;  // llama.cpp's Gemma 2 always uses the embedding
    plan.name = "output.weight";
  } else if (name.rfind("model.layers.", 0) == 0) {
    const size_t dot = name.find('.', 13);
    const auto rest = dot == std::string::npos ? std::nullopt : block_name(c, name.substr(dot + 1));
    if (!rest) throw error("no GGUF name for tensor '", hf_name, "'");
    plan.name = "blk." + name.substr(13, dot - 13) + "." + *rest;
  } else {
    throw error("no GGUF name for tensor '", hf_name, "'");
  }
  if (plan.name.ends_with("_norm.weight") || plan.name.ends_with(".bias")) plan.keep_f32 = true;
  if (is_gemma(c) && hf_name.ends_with("norm.weight")) plan.add = 1;  // llama.cpp's RMSNorm multiplies by w
  const bool llama_rope = gguf_arch_name(c) == "llama";
  if (llama_rope && name.ends_with("self_attn.q_proj.weight")) plan.permute_heads = c.num_heads;
  if (llama_rope && name.ends_with("self_attn.q_proj.bias")) plan.permute_heads = c.num_heads;
  if (llama_rope && (name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.k_proj.bias")))
    plan.permute_heads = c.num_kv_heads;
  // Gemma's query scale: into q (Gemma 2), or into q's norm, which comes after q_proj (Gemma 3).
  const bool holds_query = c.qk_norm ? name.ends_with("self_attn.q_norm.weight")
                                     : (name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias"));
  if (is_gemma(c) && holds_query) plan.row_scale = gemma_query_factor(c);
  return plan;
}

Tensor apply_gguf_plan(const GgufTensorPlan& plan, const Tensor& t, bool with_add) {
  Tensor out = t.to(Device::cpu()).to(DType::F32).clone();
  const int64_t rows = out.dim(0), cols = out.numel() / std::max<int64_t>(rows, 1);
  float* p = out.f32();
  if (with_add && plan.add != 0)
    for (int64_t i = 0; i < out.numel(); ++i) p[i] += plan.add;
  if (plan.row_scale != 1)
    for (int64_t i = 0; i < out.numel(); ++i) p[i] *= plan.row_scale;
  if (plan.permute_heads > 0) {
    // ggml's RoPE rotates adjacent pairs; transformers' rotate_half pairs i with i + d/2:
    // new row h·d + 2i + t = old row h·d + t·d/2 + i.
    const int64_t d = rows / plan.permute_heads;
    LR_CHECK(d * plan.permute_heads == rows && d % 2 == 0, plan.name, ": ", rows, " rows, ", plan.permute_heads, " heads");
    const Tensor src = out.clone();
    const float* s = src.f32();
    for (int64_t h = 0; h < plan.permute_heads; ++h)
      for (int64_t i = 0; i < d / 2; ++i)
        for (int64_t k = 0; k < 2; ++k)
          std::copy_n(s + (h * d + k * (d / 2) + i) * cols, cols, p + (h * d + 2 * i + k) * cols);
  }
  return out;
}

namespace {

// The keys every file gets (general, architecture, tokenizer) on a new writer.
io::GgufWriter begin_model_file(const ModelConfig& c, const std::string& source_dir, const GgufExportOptions& options,
                                GgufExportSummary& summary) {
  summary.arch = gguf_arch_name(c);
  io::GgufWriter w;
  w.set("general.architecture", GgufValue::string(summary.arch));
  w.set("general.type", GgufValue::string("model"));
  std::string name = options.name;
  if (name.empty()) name = std::filesystem::absolute(source_dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::absolute(source_dir).lexically_normal().parent_path().filename().string();
  w.set("general.name", GgufValue::string(name));
  summary.warnings = set_arch_keys(w, c);
  w.set("general.file_type", GgufValue::u32(gguf_file_type(options.type)));
  w.set("general.quantization_version", GgufValue::u32(2));
  const auto vocab = tok::add_gguf_vocab(w, source_dir, c.vocab_size, options.chat_template);
  summary.tokenizer = vocab.model == "none" ? "none" : vocab.model + " (" + vocab.pre + ")";
  if (vocab.model == "none") set_u32(w, summary.arch + ".vocab_size", c.vocab_size);  // llama.cpp's size without tokens
  return w;
}

}  // namespace

GgufExportSummary write_gguf_model(const Model& model, const std::string& source_dir, const std::string& path,
                                   const GgufExportOptions& options) {
  const ModelConfig& c = model.config();
  GgufExportSummary summary;
  io::GgufWriter w = begin_model_file(c, source_dir, options, summary);
  // Tensors llama.cpp computes from the config, first (as the converter writes them).
  if (c.rope.type == "llama3") w.add_tensor("rope_freqs.weight", llama3_rope_factors(c), io::GgmlType::F32);
  if (c.arch == Arch::Phi3 && c.rope.type == "longrope") {
    std::vector<float> lf(c.rope.long_factor.begin(), c.rope.long_factor.end());
    std::vector<float> sf(c.rope.short_factor.begin(), c.rope.short_factor.end());
    w.add_tensor("rope_factors_long.weight", Tensor::from_vector(lf, {static_cast<int64_t>(lf.size())}), io::GgmlType::F32);
    w.add_tensor("rope_factors_short.weight", Tensor::from_vector(sf, {static_cast<int64_t>(sf.size())}), io::GgmlType::F32);
  }
  if (c.arch == Arch::Gemma2 && model.weights().lm_head_name != model.weights().embed_name)
    throw error("an lm_head apart from the embedding: llama.cpp's Gemma 2 always computes the output with the embedding");
  for (const auto& l : model.weights().layers)
    for (const Linear* p : l.projections())
      if (p->quantized()) throw error("a model loaded with --quantize nf4 cannot be written to GGUF; load it unquantized");
  for (const auto& [hf_name, t] : named_tensors(model.weights())) {
    const auto plan = gguf_tensor_plan(c, hf_name);
    if (!plan) continue;
    const bool identity = plan->add == 0 && plan->row_scale == 1 && plan->permute_heads == 0;
    Tensor value = identity ? t.to(Device::cpu()) : apply_gguf_plan(*plan, t, true);
    w.add_tensor(plan->name, value, gguf_tensor_type(options.type, value.rank(), value.dim(-1), plan->keep_f32));
  }
  summary.tensors = static_cast<int64_t>(w.tensor_count());
  w.write(path, options.progress);
  return summary;
}

GgufExportSummary write_gguf_vocab(const ModelConfig& config, const std::string& source_dir, const std::string& path,
                                   const GgufExportOptions& options) {
  GgufExportSummary summary;
  begin_model_file(config, source_dir, options, summary).write(path);
  return summary;
}

}  // namespace lowrank::model
