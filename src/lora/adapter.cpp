#include "lowrank/lora/adapter.h"
#include "lowrank/lora/rank_padding.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "lowrank/core/error.h"
#include "lowrank/io/checkpoint_dir.h"
#include "lowrank/io/finite_check.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/lora_init.h"
#include "lowrank/lora/lora_variant.h"
#include "lowrank/lora/shared_input.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {
namespace fs = std::filesystem;

std::vector<AdaptableModule> adaptable_modules(const model::Model& model) {
  std::vector<AdaptableModule> out;
  const auto& layers = model.weights().layers;
  for (size_t l = 0; l < layers.size(); ++l)
    for (const model::Linear* lin : layers[l].projections())
      if (lin->defined()) out.push_back({static_cast<int>(l), lin->target, *lin});
  return out;
}

std::vector<AdaptableModule> embedding_modules(const model::Model& model) {
  const auto& w = model.weights();
  std::string embed = w.embed_name;
  if (embed.size() > 7 && embed.compare(embed.size() - 7, 7, ".weight") == 0) embed.resize(embed.size() - 7);
  return {{-1, Target::Embed, model::Linear{w.embed, Tensor(), embed}},
          {static_cast<int>(model.config().num_layers), Target::LmHead, model.lm_head_linear()}};
}

std::string peft_key(const std::string& module, const std::string& suffix) {
  return "base_model.model." + module + "." + suffix;
}

namespace {

std::string module_names_hint(const model::Model& model) {
  std::set<std::string> shorts;
  for (const auto& m : adaptable_modules(model)) shorts.insert(std::string(target_short_name(m.target)));
  std::string s;
  for (const auto& n : shorts) s += (s.empty() ? "" : ", ") + n;
  for (const auto& m : embedding_modules(model)) s += ", " + m.linear.name;
  auto mods = adaptable_modules(model);
  if (!mods.empty()) s += " (full paths such as " + mods.front().linear.name + ")";
  return s;
}

bool is_embedding_layer(Target t) { return t == Target::Embed || t == Target::LmHead; }

// PEFT copies every module whose path ends with a modules_to_save name; lowrank holds such copies
// for the embedding and the output layer only: a name that selects any other module, or neither
// of those two, would leave the adapter's model another one than PEFT's.
void check_modules_to_save(const LoraConfig& config, const std::map<std::string, AdaptableModule>& modules,
                           const std::string& source) {
  for (const auto& name : config.modules_to_save) {
    bool embedding = false;
    for (const auto& [path, m] : modules) {
      if (!LoraConfig::save_name_selects(name, path)) continue;
      if (!is_embedding_layer(m.target))
        throw error(source, ": modules_to_save \"", name, "\" selects ", path, "; lowrank reads modules_to_save for the "
                    "embedding and the output layer only");
      embedding = true;
    }
    if (!embedding) {
      std::string names;
      for (const auto& [path, m] : modules)
        if (is_embedding_layer(m.target)) names += (names.empty() ? "" : ", ") + path;
      throw error(source, ": modules_to_save \"", name, "\" selects neither the embedding nor the output layer of this "
                  "model (", names, "), the only modules lowrank reads modules_to_save for");
    }
  }
}

// The variant of a module: the token embedding has its own; DoRA adapts every linear layer.
VariantKind variant_for(const AdaptableModule& m, const LoraConfig& config, const std::string& source) {
  if (m.target != Target::Embed) return config.use_dora ? VariantKind::Dora : VariantKind::Linear;
  if (config.use_dora)
    throw error(source, ": DoRA (use_dora) on the embedding layer ", m.linear.name,
                " is not supported; adapt it without DoRA or leave it out of the targets");
  return VariantKind::Embedding;
}

LoraPair new_pair(const AdaptableModule& m, const LoraConfig& config, VariantKind kind) {
  LoraPair p;
  p.layer = m.layer;
  p.target = m.target;
  p.kind = kind;
  p.module = m.linear.name;
  p.r = config.rank_for(p.module);
  p.scale = config.scale_for(p.module);
  // Embedding: A [r, V], B [d, r] on the table [V, d].
  p.in = kind == VariantKind::Embedding ? m.linear.weight.dim(0) : m.linear.in_features();
  p.out = kind == VariantKind::Embedding ? m.linear.weight.dim(1) : m.linear.out_features();
  return p;
}

void sort_pairs(std::vector<LoraPair>& pairs) {
  std::sort(pairs.begin(), pairs.end(), [](const LoraPair& x, const LoraPair& y) {
    return std::pair(x.layer, static_cast<int>(x.target)) < std::pair(y.layer, static_cast<int>(y.target));
  });
}

}  // namespace

Adapter Adapter::create(model::Model& model, const LoraConfig& config, Rng& rng) {
  config.validate("LoRA config");
  Adapter a;
  a.config = config;
  // PEFT marks adapters of GPT-2's Conv1D layers (weights stored [in, out]) this way.
  if (model.config().gpt2_layout) a.config.fan_in_fan_out = true;
  const bool pissa_like = config.init == InitMode::Pissa || config.init == InitMode::Olora;
  if (pissa_like && config.use_dora)
    throw error("--init ", config.init_name(), " with --use-dora: the adapter PiSSA/OLoRA save for the original "
                "base (PEFT's weight conversion) holds only A and B, not DoRA's magnitudes; use one of the two");
  // Embedding layers first (PEFT's module order: embed_tokens, the blocks, lm_head).
  std::vector<AdaptableModule> modules;
  const std::vector<AdaptableModule> layers = embedding_modules(model);
  for (const auto& m : layers)  // all-linear alone: the blocks' linear layers only (PEFT's rule)
    if (config.targets_outside_blocks(m.linear.name)) modules.push_back(m);
  if (config.all_linear)  // a name next to all-linear must select the embedding or the output layer
    for (const auto& name : config.outside_blocks)
      if (std::none_of(layers.begin(), layers.end(),
                       [&](const AdaptableModule& m) { return LoraConfig::name_selects(name, m.linear.name); }))
        throw error("--targets all-linear,", name, ": next to all-linear name only the embedding or the output layer (",
                    layers[0].linear.name, ", ", layers[1].linear.name, "); all-linear already adapts every linear "
                    "layer of the blocks");
  for (const auto& m : adaptable_modules(model))
    if (config.targets(m.linear.name)) modules.push_back(m);
  for (const auto& m : modules) {
    if (pissa_like && m.linear.quantized())
      throw error("--init ", config.init_name(), " with --quantize nf4: PEFT initialises PiSSA/OLoRA on the "
                  "full-precision weights (then re-quantizes the residual); initialise without --quantize, or use "
                  "the default init");
    LoraPair p = new_pair(m, config, variant_for(m, config, "LoRA config"));
    if (pissa_like && is_embedding_layer(m.target))
      throw error("--init ", config.init_name(), " initialises linear layers of the blocks only; ", m.linear.name,
                  " (", target_short_name(m.target), ") cannot take it: leave it out of --targets");
    // The frozen weight as an f32 host copy, for the inits and variants that read it (PiSSA, OLoRA, DoRA).
    const bool reads_weight = pissa_like || p.kind == VariantKind::Dora;
    const Tensor weight = reads_weight ? m.linear.compute_weight().to(Device::cpu()).to(DType::F32) : Tensor();
    const Tensor residual = init_lora_pair(p, config, weight, rng);
    if (residual.defined()) {  // PiSSA / OLoRA: the model trains on W0 - s·B·A
      model::Linear* l = model.weights().layers[m.layer].projection(m.target);
      l->weight = residual.to(l->held_in_bf16_on_cpu() ? DType::F32 : l->weight.dtype()).to(l->weight.device());
    }
    lora_variant(p.kind).init_extra(p, residual.defined() ? residual : weight);
    if (is_embedding_layer(m.target)) a.base_layers.push_back({m.target, m.linear.name, m.linear.weight});
    a.pairs.push_back(std::move(p));
  }
  if (a.pairs.empty() && config.has_targets())
    throw error("--targets matched no module of the model",
                config.layers_to_transform.empty() ? "" : " in the blocks --layers-to-transform selects",
                config.exclude_modules.empty() && !config.exclude_regex ? "" : " that --exclude-modules leaves",
                "; modules that exist: ", module_names_hint(model));
  sort_pairs(a.pairs);
  if (config.bias != BiasMode::None) {
    for (const auto& m : adaptable_modules(model)) {
      if (!m.linear.bias.defined()) continue;
      if (config.bias == BiasMode::LoraOnly && !a.find(m.layer, m.target)) continue;
      // f32 master copy (the model's bias is bf16 on the GPU): trained like A and B.
      a.biases.push_back({m.layer, m.target, m.linear.name, ops::cast(m.linear.bias.clone(), DType::F32), {}});
    }
  }
  if (!config.modules_to_save.empty()) {
    std::map<std::string, AdaptableModule> by_name;
    for (const auto& m : adaptable_modules(model)) by_name.emplace(m.linear.name, m);
    for (const auto& m : layers) by_name.emplace(m.linear.name, m);
    check_modules_to_save(config, by_name, "--modules-to-save");
    for (const auto& m : layers) {
      if (!config.saves(m.linear.name)) continue;
      if (a.find(m.layer, m.target))
        throw error("--modules-to-save: ", m.linear.name, " is adapted by --targets too; train it whole or with LoRA, "
                    "not both");
      // An f32 copy that the model computes with once attached (attach_base_layers): PEFT's
      // ModulesToSaveWrapper trains a copy and leaves the original module as it was.
      a.saved_modules.push_back({m.target, m.linear.name, ops::cast(m.linear.weight.clone(), DType::F32), {}, m.layer});
    }
  }
  if (a.pairs.empty() && a.biases.empty() && a.saved_modules.empty())
    throw error("--targets none --bias all: the model's linear layers have no biases to train (bias-only "
                "training, BitFit, needs a base with biases such as GPT-2's)");
  a.place(model);
  return a;
}

Adapter Adapter::load(const std::string& dir, const model::Model& model) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  if (!io::file_exists(cfg_path)) throw error(dir, ": no adapter_config.json (is this a PEFT adapter folder?)");
  Adapter a;
  a.config = LoraConfig::from_json(io::read_json(cfg_path), cfg_path);
  std::string weights = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!io::file_exists(weights))
    throw error(dir, ": no adapter_model.safetensors",
                io::file_exists((fs::path(dir) / "adapter_model.bin").string())
                    ? "; its adapter_model.bin is PyTorch's pickle format, which lowrank does not read: re-save the "
                      "adapter with PEFT's save_pretrained(dir, safe_serialization=True)"
                    : "");
  auto file = io::SafetensorsFile::open(weights);

  std::map<std::string, AdaptableModule> by_name;
  for (const auto& m : adaptable_modules(model)) by_name.emplace(m.linear.name, m);
  for (const auto& m : embedding_modules(model)) by_name.emplace(m.linear.name, m);
  check_modules_to_save(a.config, by_name, cfg_path);
  // Every tensor of the file by module, then by key suffix ("lora_A.weight", ...).
  std::map<std::string, std::map<std::string, Tensor>> tensors;
  std::map<std::string, std::string> file_key;  // "<module>|<suffix>" -> the key as written
  static const char* kSuffixes[] = {"lora_A.weight", "lora_B.weight", "lora_embedding_A", "lora_embedding_B",
                                    "lora_magnitude_vector", "base_layer.weight", "bias",
                                    "weight"};  // last: a modules_to_save copy, "<module>.weight"
  for (const auto& info : file.tensors()) {
    std::string key = info.name;
    const std::string prefix = "base_model.model.";
    if (key.rfind(prefix, 0) != 0)
      throw error(weights, ": unexpected tensor \"", key, "\" (expected keys starting with ", prefix, ")");
    key = key.substr(prefix.size());
    // Some PEFT versions keep the adapter name: "...lora_A.default.weight", "...lora_embedding_A.default".
    if (auto p = key.find(".default.weight"); p != std::string::npos) key = key.substr(0, p) + ".weight";
    if (key.size() > 8 && key.compare(key.size() - 8, 8, ".default") == 0) key.resize(key.size() - 8);
    // PEFT keeps the wrapped layer's own bias under "<module>.base_layer.bias".
    if (auto p = key.find(".base_layer.bias"); p != std::string::npos) key = key.substr(0, p) + ".bias";
    // A modules_to_save copy as PEFT names it inside the model (its saved files drop the middle).
    if (auto p = key.find(".modules_to_save.weight"); p != std::string::npos) key = key.substr(0, p) + ".weight";
    auto ends = [&](const std::string& s) {
      return key.size() > s.size() + 1 && key.compare(key.size() - s.size(), s.size(), s) == 0 &&
             key[key.size() - s.size() - 1] == '.';
    };
    std::string module, suffix;
    for (const char* k : kSuffixes)
      if (module.empty() && ends(k)) {
        suffix = k;
        module = key.substr(0, key.size() - suffix.size() - 1);
      }
    if (module.empty()) throw error(weights, ": unexpected tensor \"", info.name, "\"");
    if (!by_name.count(module))
      throw error(weights, ": tensor \"", info.name, "\" names module \"", module,
                  "\", which this model does not have (is the adapter for another base model?)");
    if (!is_float(info.dtype) || info.dtype == DType::F8_E4M3 || info.dtype == DType::F8_E5M2)
      throw error(weights, ": tensor \"", info.name, "\" has unsupported dtype ", dtype_name(info.dtype));
    Tensor t = file.get(info.name).to(DType::F32).clone();
    io::check_finite(t, weights, info.name);  // a NaN or inf would make every output it touches NaN
    tensors[module][suffix] = std::move(t);
    file_key[module + "|" + suffix] = info.name;
  }
  for (auto& [module, by_suffix] : tensors) {
    const AdaptableModule& m = by_name.at(module);
    if (auto it = by_suffix.find("bias"); it != by_suffix.end()) {
      if (is_embedding_layer(m.target) || !m.linear.bias.defined() || it->second.shape() != Shape{m.linear.out_features()})
        throw error(weights, ": tensor \"", file_key[module + "|bias"], "\" has shape ", shape_str(it->second.shape()),
                    m.linear.bias.defined() ? ", the model's bias is " + shape_str({m.linear.out_features()})
                                            : ", but the model's " + module + " has no bias");
      a.biases.push_back({m.layer, m.target, module, it->second, {}});
      by_suffix.erase(it);
    }
    if (auto it = by_suffix.find("base_layer.weight"); it != by_suffix.end()) {
      if (!is_embedding_layer(m.target) || it->second.shape() != m.linear.weight.shape())
        throw error(weights, ": tensor \"", file_key[module + "|base_layer.weight"], "\" has shape ",
                    shape_str(it->second.shape()), "; base_layer weights are read for embedding layers only, shaped ",
                    shape_str(m.linear.weight.shape()), " (is the adapter for another base model?)");
      a.base_layers.push_back({m.target, module, it->second});
      by_suffix.erase(it);
    }
    if (auto it = by_suffix.find("weight"); it != by_suffix.end()) {
      const std::string& key = file_key[module + "|weight"];
      if (!a.config.saves(module))  // (a name it has selects the embedding or the output layer only: checked above)
        throw error(weights, ": tensor \"", key, "\" is a whole weight of ", module,
                    ", which adapter_config.json's modules_to_save does not name");
      if (it->second.shape() != m.linear.weight.shape())
        throw error(weights, ": tensor \"", key, "\" has shape ", shape_str(it->second.shape()), ", the model's ", module,
                    " is ", shape_str(m.linear.weight.shape()), " (is the adapter for another base model?)");
      a.saved_modules.push_back({m.target, module, it->second, {}, m.layer});
      by_suffix.erase(it);
    }
    if (by_suffix.empty()) continue;
    // PEFT creates LoRA layers only on the modules target_modules selects and leaves tensors for
    // any other module unused (or refuses the adapter when nothing matches): applying them would
    // give another model than PEFT's.
    if (!a.config.targets(module))
      throw error(weights, ": tensor \"", file_key[module + "|" + by_suffix.begin()->first], "\" adapts module \"",
                  module, "\", which adapter_config.json's target_modules does not select (or its exclude_modules "
                  "excludes, or its layers_to_transform leaves out)");
    LoraPair p = new_pair(m, a.config, variant_for(m, a.config, cfg_path));
    const LoraVariant& variant = lora_variant(p.kind);
    const auto layer_tensors = variant.tensors(p);
    // The rank comes from A; then every tensor the variant lists must be there with its shape.
    auto a_it = by_suffix.find(layer_tensors[0].key);
    if (a_it == by_suffix.end())
      throw error(weights, ": module \"", module, "\" has no ", layer_tensors[0].key, " [r, ", p.in, "] (its ",
                  variant_name(p.kind), " layer needs ", layer_tensors[0].key, ", ", layer_tensors[1].key,
                  p.kind == VariantKind::Dora ? " and lora_magnitude_vector" : "", ")");
    if (a_it->second.rank() != 2)
      throw error(weights, ": tensor \"", file_key[module + "|" + layer_tensors[0].key], "\" has shape ",
                  shape_str(a_it->second.shape()), ", expected [r, ", p.in, "]");
    p.r = a_it->second.dim(0);
    for (const auto& t : variant.tensors(p)) {
      auto it = by_suffix.find(t.key);
      if (it == by_suffix.end())
        throw error(weights, ": \"", peft_key(module, t.key), "\" is missing (", variant_name(p.kind),
                    " layer; adapter_config.json use_dora = ", a.config.use_dora ? "true" : "false", ")");
      if (it->second.shape() != t.shape)
        throw error(weights, ": tensor \"", file_key[module + "|" + t.key], "\" has shape ",
                    shape_str(it->second.shape()), ", expected ", shape_str(t.shape),
                    " for this model (is the adapter for another base model?)");
      *t.value = it->second;
      by_suffix.erase(it);
    }
    if (!by_suffix.empty())
      throw error(weights, ": tensor \"", file_key[module + "|" + by_suffix.begin()->first], "\" does not belong to a ",
                  variant_name(p.kind), " layer (adapter_config.json use_dora = ", a.config.use_dora ? "true" : "false",
                  ")");
    if (p.r != a.config.rank_for(module))
      throw error(weights, ": \"", peft_key(module, layer_tensors[0].key), "\" has rank ", p.r,
                  " but adapter_config.json says ", a.config.rank_for(module));
    a.pairs.push_back(std::move(p));
  }
  if (a.pairs.empty() && a.biases.empty() && a.saved_modules.empty())
    throw error(weights, ": the adapter holds no LoRA tensors");
  sort_pairs(a.pairs);
  a.place(model);
  return a;
}

void Adapter::save(const std::string& dir) const {
  io::write_checkpoint_dir(dir, [&](const std::string& tmp) { write_files(tmp); },
                           nlohmann::json{{"kind", "adapter"}, {"format", "peft-lora"}});
}

void Adapter::write_files(const std::string& dir) const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  bool converted = false;
  for (const auto& p : pairs) {
    // PiSSA / OLoRA: A and B saved for the original base (lora_init.h); p.A, p.B otherwise.
    const auto [A, B] = converted_pair(p);
    converted = converted || p.A_init.defined();
    for (const auto& t : lora_variant(p.kind).tensors(const_cast<LoraPair&>(p))) {
      const Tensor& value = t.value == &p.A ? A : t.value == &p.B ? B : *t.value;
      tensors.emplace_back(peft_key(p.module, t.key), value.to(Device::cpu()));
    }
  }
  for (const auto& b : biases) tensors.emplace_back(bias_key(b), b.value.to(Device::cpu()));
  // As PEFT's save_embedding_layers="auto": the frozen embedding layers go with the adapter.
  for (const auto& b : base_layers) tensors.emplace_back(peft_key(b.module, "base_layer.weight"), b.value.to(Device::cpu()));
  for (const auto& s : saved_modules) tensors.emplace_back(peft_key(s.module, "weight"), s.value.to(Device::cpu()));
  nlohmann::json cfg = (converted ? converted_config(config) : config).to_json();
  if (!config.all_linear && !config.target_regex) {
    // PEFT writes the set of short names it adapted; keep the user's list otherwise.
    cfg["target_modules"] = config.target_modules;
  } else if (config.all_linear && (!config.outside_blocks.empty() || !config.layers_to_transform.empty())) {
    // all-linear with the embedding / output layer, or with layers_to_transform (PEFT takes that
    // with a list only), has no PEFT form: the adapted modules' names.
    std::set<std::string> names;
    for (const auto& p : pairs) names.insert(p.module.substr(p.module.rfind('.') + 1));
    cfg["target_modules"] = names;
  }
  io::write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
  io::write_json_atomic((fs::path(dir) / "adapter_config.json").string(), cfg);
}

std::string Adapter::bias_key(const BiasParam& b) const {
  // As PEFT names it: a LoRA-wrapped module's own bias lives under "base_layer".
  return peft_key(b.module, find(b.layer, b.target) ? "base_layer.bias" : "bias");
}

const LoraPair* Adapter::find(int layer, Target t) const {
  for (const auto& p : pairs)
    if (p.layer == layer && p.target == t) return &p;
  return nullptr;
}
LoraPair* Adapter::find(int layer, Target t) {
  return const_cast<LoraPair*>(static_cast<const Adapter*>(this)->find(layer, t));
}

std::vector<AdapterParam> Adapter::parameters() {
  std::vector<AdapterParam> out;
  for (auto& p : pairs)
    for (const auto& t : lora_variant(p.kind).tensors(p)) {
      // The working copy's second home: B's block of W_ext, A's rows of W_dx_ext (k_extension.h).
      const bool ext_b = t.working == &p.B_work && p.W_ext.defined();
      const bool ext_a = t.working == &p.A_work && p.A_ext_rows.defined();
      out.push_back({p.module + "." + t.name, t.value, t.grad, t.working, p.layer,
                     ext_b ? &p.W_ext : ext_a ? &p.A_ext_rows : nullptr, ext_b ? p.ext_col : 0});
    }
  for (auto& b : biases) out.push_back({b.module + ".bias", &b.value, &b.grad, nullptr, b.layer});
  for (auto& s : saved_modules) out.push_back({s.module + ".weight", &s.value, &s.grad, nullptr, s.layer});
  return out;
}

int64_t Adapter::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : const_cast<Adapter*>(this)->parameters()) n += p.value->numel();
  return n;
}

void Adapter::to(Device device) {
  for (auto& p : parameters())
    for (Tensor* t : {p.value, p.grad, p.working})
      if (t && t->defined()) *t = t->to(device);
  for (auto& p : pairs) p.drop_device_copies();  // moved one by one
}

void Adapter::place(const model::Model& model) {
  for (auto& p : parameters()) {
    const Device d = model.layer_device(p.layer);
    for (Tensor* t : {p.value, p.grad, p.working})
      if (t && t->defined()) *t = t->to(d);
  }
  for (auto& p : pairs) p.drop_device_copies();  // moved one by one
}

void Adapter::attach_biases(model::Model& model) {
  for (auto& b : biases) {
    model::Linear* l = model.weights().layers[b.layer].projection(b.target);
    LR_CHECK(l && l->bias.defined() && l->bias.numel() == b.value.numel(), "bias of ", b.module);
    if (l->bias.device() != b.value.device())
      throw error("trained biases (bias=all / lora_only): the adapter is on ", b.value.device().str(),
                  ", the model on ", l->bias.device().str());
    // The model adds the f32 master to its (bf16 or f32) projection output directly.
    l->bias = b.value;
  }
}

void Adapter::attach_saved_modules(model::Model& model) const {
  auto& w = model.weights();
  for (const auto& s : saved_modules) {  // PEFT's trained copy replaces one layer of a tied pair only
    model.untie_lm_head();
    Tensor& target = s.target == Target::Embed ? w.embed : w.lm_head;
    // (The same storage when dtype and device agree: a copy being trained updates the model.)
    target = s.value.to(target.dtype()).to(target.device());
  }
}

void Adapter::attach_base_layers(model::Model& model) const {
  auto& w = model.weights();
  for (const auto& b : base_layers) {
    Tensor& target = b.target == Target::Embed ? w.embed : w.lm_head;
    if (target.raw() == b.value.raw()) continue;  // created here: the model's own tensor
    // In place, so that a tied lm_head (the same storage) follows its embedding, as in PyTorch.
    ops::cast_into_(target, b.value.to(target.device()));
  }
  attach_saved_modules(model);
  if (config.init != InitMode::Pissa && config.init != InitMode::Olora) return;
  if (config.pissa_niter > 0)
    throw error("adapter_config.json: init_lora_weights \"", config.init_name(), "\": PEFT applies such an adapter to "
                "the residual of a randomized SVD that cannot be reproduced; save it converted "
                "(path_initial_model_for_weight_conversion) or with init_lora_weights=true and its residual model");
  for (const auto& p : pairs) {
    if (p.A_init.defined()) continue;  // created here: the model already holds the residual
    model::Linear* l = w.layers[p.layer].projection(p.target);
    LR_CHECK(l, "no projection for ", p.module);
    if (l->quantized())
      throw error("adapter_config.json: init_lora_weights \"", config.init_name(), "\": the adapter applies to the "
                  "residual of the full-precision base, which a quantized model (--quantize nf4) does not hold; "
                  "load it without --quantize");
    LoraPair initial = p;  // the same shapes and scale; A and B as the init makes them
    Rng unused(0);         // the exact SVD and the QR draw nothing
    const Tensor residual = init_lora_pair(initial, config, l->weight.to(Device::cpu()).to(DType::F32), unused);
    l->weight = residual.to(l->held_in_bf16_on_cpu() ? DType::F32 : l->weight.dtype()).to(l->weight.device());
  }
}

void Adapter::allocate_grads() {
  for (auto& p : parameters()) *p.grad = Tensor::zeros_like(*p.value);
  stack_shared_input_tensors(*this, /*working=*/false, /*grads=*/true);
}

void Adapter::make_working_copies(DType dtype) {
  for (auto& p : parameters())
    if (p.working) *p.working = dtype == p.value->dtype() ? Tensor() : ops::cast(*p.value, dtype);
  for (LoraPair& p : pairs) {  // the GPU's GEMMs at a rank of a multiple of 8 (rank_padding.h)
    const int64_t rc = compute_rank(p.r, p.A.device());
    if (p.kind != VariantKind::Linear || !p.A_work.defined() || rc == p.r) continue;
    p.A_work = padded(p.A_work, rc, p.in, dtype);
    p.B_work = padded(p.B_work, p.out, rc, dtype);
  }
  stack_shared_input_tensors(*this, /*working=*/true, /*grads=*/false);
}

}  // namespace lowrank::lora
