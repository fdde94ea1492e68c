#include "lowrank/model/weights.h"

#include <unistd.h>

#include <filesystem>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/io/finite_check.h"
#include "lowrank/ops/ops.h"

#include <set>

namespace lowrank::model {

Linear* LayerWeights::projection(Target t) {
  return const_cast<Linear*>(static_cast<const LayerWeights*>(this)->projection(t));
}

std::vector<const Linear*> LayerWeights::projections() const {
  return {&q, &k, &v, &qkv, &o, &gate, &up, &gate_up, &down};
}

const Linear* LayerWeights::projection(Target t) const {
  for (const Linear* p : projections())
    if (p->defined() && p->target == t) return p;
  return nullptr;
}

namespace {

class Loader {
 public:
  Loader(const io::TensorStore& store, DType compute, Placement placement, Quantization quantize)
      : store_(store), compute_(compute), placement_(std::move(placement)), device_(placement_.devices[0]),
        quantize_(quantize) {}

  // Where the following tensors go: the device of decoder layer `layer` (-1: the embedding's,
  // num_layers: the head's), so that a split model is read straight onto its devices.
  void place(int64_t layer) { device_ = placement_.device_of_layer(layer); }
  Device device() const { return device_; }

  bool has(const std::string& name) const { return store_.contains(name); }

  // Fetches `name`, checks its shape, converts it to the compute dtype.
  Tensor get(const std::string& name, const Shape& expected) const { return get(name, expected, compute_, device_); }

  Tensor get(const std::string& name, const Shape& expected, DType dtype, Device device) const {
    if (!store_.contains(name))
      throw error(store_.source(), ": missing tensor \"", name, "\" (expected shape ", shape_str(expected), ")");
    const auto& info = store_.info(name);
    if (store_.contains(name + ".absmax") || store_.contains(name + ".quant_state.bitsandbytes__nf4") ||
        store_.contains(name + ".quant_state.bitsandbytes__fp4") || store_.contains(name + ".SCB"))
      throw error(store_.file_of(name), ": tensor \"", name, "\" is stored quantized by bitsandbytes; lowrank reads "
                  "full-precision checkpoints (F32, BF16, F16) and quantizes them itself: use the original model "
                  "with --quantize nf4");
    if (info.shape != expected)
      throw error(store_.file_of(name), ": tensor \"", name, "\" has shape ", shape_str(info.shape),
                  ", expected ", shape_str(expected));
    if (!is_float(info.dtype) || info.dtype == DType::F64 || info.dtype == DType::F8_E4M3 ||
        info.dtype == DType::F8_E5M2)
      throw error(store_.file_of(name), ": tensor \"", name, "\" has unsupported dtype ", dtype_name(info.dtype),
                  " (expected F32, BF16 or F16)");
    Tensor t = store_.get(name);
    // Always copy: the result must not alias the read-only mapping (merge writes into weights).
    // Converted on the CPU (from f32 when the target is not f32, so rounding happens once).
    Tensor c = t.dtype() == dtype ? t.clone() : t.to(DType::F32).to(dtype);
    io::check_finite(c, store_.file_of(name), name, /*converted=*/t.dtype() != dtype);  // NaN/inf: refused
    return c.to(device);
  }

  Linear linear(const std::string& module, Target target, int64_t out, int64_t in, bool bias) const {
    Linear l;
    l.name = module;
    l.target = target;
    if (quantize_ == Quantization::Nf4)
      l.nf4 = nf4_quantize(get(module + ".weight", {out, in}, DType::F32, Device::cpu()), compute_, device_);
    else l.weight = get(module + ".weight", {out, in}, stored_dtype(module + ".weight"), device_);
    if (bias) l.bias = get(module + ".bias", {out});
    return l;
  }

  // GPT-2 Conv1D: stored [in, out]; transposed to [out, in].
  Linear conv1d(const std::string& module, Target target, int64_t out, int64_t in) const {
    Linear l;
    l.name = module;
    l.target = target;
    l.transposed_in_checkpoint = true;
    if (quantize_ != Quantization::Nf4)
      l.weight = ops::transpose2d(get(module + ".weight", {in, out}, stored_dtype(module + ".weight"), Device::cpu()))
                     .to(device_);
    else l.nf4 = nf4_quantize(ops::transpose2d(get(module + ".weight", {in, out}, DType::F32, Device::cpu())),
                              compute_, device_);
    l.bias = get(module + ".bias", {out});
    return l;
  }

  // A projection's dtype here: the compute dtype, or bf16 where KeepBf16 keeps a bf16 checkpoint's.
  DType stored_dtype(const std::string& name) const {
    const bool keep = quantize_ == Quantization::KeepBf16 && store_.contains(name) &&
                      store_.info(name).dtype == DType::BF16 && device_.is_cpu();
    return keep ? DType::BF16 : compute_;
  }

  Norm norm(const std::string& module, int64_t d, bool bias) const {
    Norm n;
    n.name = module;
    n.weight = get(module + ".weight", {d});
    if (bias) n.bias = get(module + ".bias", {d});
    return n;
  }

 private:
  const io::TensorStore& store_;
  DType compute_;
  Placement placement_;
  Device device_;
  Quantization quantize_;
};

// Checkpoints named as transformers' Llama-style decoders (model.layers.N.self_attn.q_proj, ...).
ModelWeights load_decoder(const ModelConfig& c, Loader& L) {
  ModelWeights w;
  const int64_t d = c.hidden_size, I = c.intermediate_size;
  const bool layer_norm_bias = c.norm == NormKind::Layer;
  w.embed_name = "model.embed_tokens.weight";
  L.place(-1);
  w.embed = L.get(w.embed_name, {c.vocab_size, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    L.place(i);
    LayerWeights l;
    l.attn_norm = L.norm(p + "input_layernorm", d, layer_norm_bias);
    if (c.sandwich_norms) {  // Gemma's post_attention_layernorm is the attention output's, not the MLP input's
      l.post_attn_norm = L.norm(p + "post_attention_layernorm", d, layer_norm_bias);
      l.mlp_norm = L.norm(p + "pre_feedforward_layernorm", d, layer_norm_bias);
      l.post_mlp_norm = L.norm(p + "post_feedforward_layernorm", d, layer_norm_bias);
    } else {
      l.mlp_norm = L.norm(p + "post_attention_layernorm", d, layer_norm_bias);
    }
    if (c.fused_qkv) {
      l.qkv = L.linear(p + "self_attn.qkv_proj", Target::QKV, c.q_dim() + 2 * c.kv_dim(), d, c.attention_bias);
    } else {
      l.q = L.linear(p + "self_attn.q_proj", Target::Q, c.q_dim(), d, c.attention_bias);
      l.k = L.linear(p + "self_attn.k_proj", Target::K, c.kv_dim(), d, c.attention_bias);
      l.v = L.linear(p + "self_attn.v_proj", Target::V, c.kv_dim(), d, c.attention_bias);
    }
    l.o = L.linear(p + "self_attn.o_proj", Target::O, d, c.q_dim(), c.o_bias);
    if (c.qk_norm) {
      l.q_norm = L.norm(p + "self_attn.q_norm", c.head_dim, false);
      l.k_norm = L.norm(p + "self_attn.k_norm", c.head_dim, false);
    }
    if (c.fused_gate_up) {
      l.gate_up = L.linear(p + "mlp.gate_up_proj", Target::GateUp, 2 * I, d, c.mlp_bias);
    } else {
      l.gate = L.linear(p + "mlp.gate_proj", Target::Gate, I, d, c.mlp_bias);
      l.up = L.linear(p + "mlp.up_proj", Target::Up, I, d, c.mlp_bias);
    }
    l.down = L.linear(p + "mlp.down_proj", Target::Down, d, I, c.mlp_bias);
    w.layers.push_back(std::move(l));
  }
  L.place(c.num_layers);
  w.final_norm = L.norm("model.norm", d, layer_norm_bias);
  if (c.tie_word_embeddings && !L.has("lm_head.weight")) {
    w.lm_head = w.embed.to(L.device());  // the same tensor, or a split model's copy on the last stage
    w.lm_head_name = w.embed_name;
  } else {
    w.lm_head_name = "lm_head.weight";
    w.lm_head = L.get(w.lm_head_name, {c.vocab_size, d});
  }
  return w;
}

ModelWeights load_gpt2(const ModelConfig& c, Loader& L) {
  ModelWeights w;
  const int64_t d = c.hidden_size;
  // Checkpoints saved by GPT2LMHeadModel prefix "transformer."; the original ones do not.
  const std::string root = L.has("transformer.wte.weight") ? "transformer." : "";
  w.embed_name = root + "wte.weight";
  L.place(-1);
  w.embed = L.get(w.embed_name, {c.vocab_size, d});
  w.positions = L.get(root + "wpe.weight", {c.max_position_embeddings, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = root + "h." + std::to_string(i) + ".";
    L.place(i);
    LayerWeights l;
    l.attn_norm = L.norm(p + "ln_1", d, true);
    l.mlp_norm = L.norm(p + "ln_2", d, true);
    l.qkv = L.conv1d(p + "attn.c_attn", Target::CAttn, 3 * d, d);
    l.o = L.conv1d(p + "attn.c_proj", Target::CProj, d, d);
    l.up = L.conv1d(p + "mlp.c_fc", Target::CFc, c.intermediate_size, d);
    l.down = L.conv1d(p + "mlp.c_proj", Target::MlpCProj, d, c.intermediate_size);
    w.layers.push_back(std::move(l));
  }
  L.place(c.num_layers);
  w.final_norm = L.norm(root + "ln_f", d, true);
  if (L.has("lm_head.weight") && !c.tie_word_embeddings) {
    w.lm_head_name = "lm_head.weight";
    w.lm_head = L.get(w.lm_head_name, {c.vocab_size, d});
  } else {
    w.lm_head = w.embed.to(L.device());
    w.lm_head_name = w.embed_name;
  }
  return w;
}

void add_linear(std::vector<std::pair<std::string, Tensor>>& out, const Linear& l) {
  if (!l.defined()) return;
  if (!l.quantized()) out.emplace_back(l.name + ".weight", l.weight);
  if (l.bias.defined()) out.emplace_back(l.name + ".bias", l.bias);
}

void add_norm(std::vector<std::pair<std::string, Tensor>>& out, const Norm& n) {
  if (!n.weight.defined()) return;
  out.emplace_back(n.name + ".weight", n.weight);
  if (n.bias.defined()) out.emplace_back(n.name + ".bias", n.bias);
}

}  // namespace

ModelWeights load_weights(const ModelConfig& config, const io::TensorStore& store, DType compute, Device device,
                          Quantization quantize) {
  return load_weights(config, store, compute, Placement::single(device, config.num_layers), quantize);
}

ModelWeights load_weights(const ModelConfig& config, const io::TensorStore& store, DType compute,
                          const Placement& placement, Quantization quantize) {
  Loader loader(store, compute, placement, quantize);
  return config.gpt2_layout ? load_gpt2(config, loader) : load_decoder(config, loader);
}

std::vector<std::pair<std::string, Tensor>> checkpoint_tensors(const ModelConfig& c, const ModelWeights& w) {
  auto out = named_tensors(w);
  std::set<std::string> conv1d;
  for (const auto& l : w.layers)
    for (const Linear* p : l.projections())
      if (p->defined() && p->transposed_in_checkpoint) conv1d.insert(p->name + ".weight");
  for (auto& [name, t] : out)
    if (conv1d.count(name)) t = ops::transpose2d(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> named_tensors(const LayerWeights& l) {
  std::vector<std::pair<std::string, Tensor>> out;
  add_norm(out, l.attn_norm);
  add_norm(out, l.q_norm);
  add_norm(out, l.k_norm);
  for (const Linear* p : l.projections()) add_linear(out, *p);
  add_norm(out, l.post_attn_norm);
  add_norm(out, l.mlp_norm);
  add_norm(out, l.post_mlp_norm);
  return out;
}

std::vector<std::pair<std::string, Tensor>> named_tensors(const ModelWeights& w) {
  std::vector<std::pair<std::string, Tensor>> out;
  out.emplace_back(w.embed_name, w.embed);
  if (w.positions.defined()) {
    const std::string root = w.embed_name.substr(0, w.embed_name.size() - std::string("wte.weight").size());
    out.emplace_back(root + "wpe.weight", w.positions);
  }
  for (const auto& l : w.layers) {
    auto layer = named_tensors(l);
    out.insert(out.end(), layer.begin(), layer.end());
  }
  add_norm(out, w.final_norm);
  if (w.lm_head_name != w.embed_name) out.emplace_back(w.lm_head_name, w.lm_head);
  return out;
}

Quantization parse_quantization(const std::string& name, const char* flag) {
  if (name == "none") return Quantization::None;
  if (name == "nf4") return Quantization::Nf4;
  throw error(flag, " must be none or nf4 (4-bit NormalFloat, QLoRA), got '", name, "'");
}

Quantization inference_quantization(const std::string& flag_value, Device device, const std::string& model_dir) {
  const Quantization q = parse_quantization(flag_value);
  if (q != Quantization::None || !device.is_cpu()) return q;
  if (ModelConfig::load(model_dir).dtype != DType::BF16) return q;
  int64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(model_dir, ec)) {
    if (e.path().extension() != ".safetensors") continue;
    const auto size = e.file_size(ec);
    if (!ec) bytes += static_cast<int64_t>(size);  // unreadable: Model::load names it
  }
  const int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE));
  if (2 * bytes <= memory / 2) return q;
  log_info("model weights: the checkpoint's bf16 projections kept in bf16 (an f32 copy, ", 2 * bytes / (1 << 20),
           " MiB, would take more than half of the ", memory / (1 << 20), " MiB of memory)");
  return Quantization::KeepBf16;
}

void quantize_linear(Linear& l, Quantization quantize) {
  if (quantize != Quantization::Nf4 || !l.defined() || l.quantized()) return;
  l.nf4 = nf4_quantize(l.weight, l.weight.dtype(), l.weight.device());
  l.weight = Tensor();
}

int64_t parameter_count(const ModelWeights& w) {
  int64_t n = 0;
  for (const auto& [name, t] : named_tensors(w)) n += t.numel();
  for (const auto& l : w.layers)
    for (const Linear* p : l.projections())
      if (p->quantized()) n += p->nf4.numel();
  return n;
}

}  // namespace lowrank::model
