#include "lowrank/lora/adapter.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "lowrank/core/error.h"
#include "lowrank/io/checkpoint_dir.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {
namespace fs = std::filesystem;

std::vector<AdaptableModule> adaptable_modules(const model::Model& model) {
  std::vector<AdaptableModule> out;
  const auto& layers = model.weights().layers;
  for (size_t l = 0; l < layers.size(); ++l)
    for (const model::Linear* lin : layers[l].projections())
      if (lin->defined()) out.push_back({static_cast<int>(l), lin->target, lin});
  return out;
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
  auto mods = adaptable_modules(model);
  if (!mods.empty()) s += " (full paths such as " + mods.front().linear->name + ")";
  return s;
}

}  // namespace

Adapter Adapter::create(const model::Model& model, const LoraConfig& config, Rng& rng) {
  config.validate("LoRA config");
  Adapter a;
  a.config = config;
  // PEFT marks adapters of GPT-2's Conv1D layers (weights stored [in, out]) this way.
  if (model.config().gpt2_layout) a.config.fan_in_fan_out = true;
  for (const auto& m : adaptable_modules(model)) {
    if (!config.targets(m.linear->name)) continue;
    LoraPair p;
    p.layer = m.layer;
    p.target = m.target;
    p.module = m.linear->name;
    p.r = config.rank_for(p.module);
    p.scale = config.scale_for(p.module);
    const int64_t in = m.linear->in_features(), out = m.linear->out_features();
    p.A = Tensor::empty({p.r, in});
    float* A = p.A.f32();
    if (config.init == InitMode::Gaussian) {
      const float stddev = static_cast<float>(1.0 / p.r);  // PEFT: nn.init.normal_(A, std=1/r)
      for (int64_t i = 0; i < p.A.numel(); ++i) A[i] = rng.normal() * stddev;
    } else {  // kaiming_uniform(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
      const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(in)));
      for (int64_t i = 0; i < p.A.numel(); ++i) A[i] = rng.uniform(-bound, bound);
    }
    p.B = Tensor::zeros({out, p.r});
    a.pairs.push_back(std::move(p));
  }
  if (a.pairs.empty())
    throw error("--targets matched no module of the model; modules that exist: ", module_names_hint(model));
  if (config.bias != BiasMode::None) {
    for (const auto& m : adaptable_modules(model)) {
      if (!m.linear->bias.defined()) continue;
      if (config.bias == BiasMode::LoraOnly && !a.find(m.layer, m.target)) continue;
      // f32 master copy (the model's bias is bf16 on the GPU): trained like A and B.
      a.biases.push_back({m.layer, m.target, m.linear->name, ops::cast(m.linear->bias.clone(), DType::F32), {}});
    }
  }
  a.to(model.device());
  return a;
}

Adapter Adapter::load(const std::string& dir, const model::Model& model) {
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  if (!io::file_exists(cfg_path)) throw error(dir, ": no adapter_config.json (is this a PEFT adapter folder?)");
  Adapter a;
  a.config = LoraConfig::from_json(io::read_json(cfg_path), cfg_path);
  std::string weights = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!io::file_exists(weights)) throw error(dir, ": no adapter_model.safetensors");
  auto file = io::SafetensorsFile::open(weights);

  std::map<std::string, AdaptableModule> by_name;
  for (const auto& m : adaptable_modules(model)) by_name.emplace(m.linear->name, m);
  std::map<std::string, Tensor> A, B;
  for (const auto& info : file.tensors()) {
    std::string key = info.name;
    const std::string prefix = "base_model.model.";
    if (key.rfind(prefix, 0) != 0)
      throw error(weights, ": unexpected tensor \"", key, "\" (expected keys starting with ", prefix, ")");
    key = key.substr(prefix.size());
    // Some PEFT versions keep the adapter name: "...lora_A.default.weight".
    if (auto p = key.find(".default.weight"); p != std::string::npos) key = key.substr(0, p) + ".weight";
    // PEFT keeps the wrapped layer's own bias under "<module>.base_layer.bias".
    if (auto p = key.find(".base_layer.bias"); p != std::string::npos) key = key.substr(0, p) + ".bias";
    auto ends = [&](const std::string& s) { return key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0; };
    std::string module, kind;
    for (const char* k : {".lora_A.weight", ".lora_B.weight", ".bias"})
      if (ends(k)) {
        module = key.substr(0, key.size() - std::string(k).size());
        kind = k;
      }
    if (key.find("lora_embedding") != std::string::npos || key.find("lora_magnitude") != std::string::npos)
      throw error(weights, ": tensor \"", info.name, "\" (embedding LoRA / DoRA) is not supported");
    if (module.empty()) throw error(weights, ": unexpected tensor \"", info.name, "\"");
    auto it = by_name.find(module);
    if (it == by_name.end())
      throw error(weights, ": tensor \"", info.name, "\" names module \"", module,
                  "\", which this model does not have (is the adapter for another base model?)");
    if (!is_float(info.dtype) || info.dtype == DType::F8_E4M3 || info.dtype == DType::F8_E5M2)
      throw error(weights, ": tensor \"", info.name, "\" has unsupported dtype ", dtype_name(info.dtype));
    Tensor t = file.get(info.name).to(DType::F32).clone();
    if (kind == ".lora_A.weight") A[module] = t;
    else if (kind == ".lora_B.weight") B[module] = t;
    else {
      const auto& m = it->second;
      if (info.shape != Shape{m.linear->out_features()})
        throw error(weights, ": tensor \"", info.name, "\" has shape ", shape_str(info.shape), ", the model's bias is ",
                    shape_str({m.linear->out_features()}));
      a.biases.push_back({m.layer, m.target, module, t, {}});
    }
  }
  for (const auto& [module, tA] : A) {
    const auto& m = by_name.at(module);
    auto bit = B.find(module);
    if (bit == B.end()) throw error(weights, ": \"", peft_key(module, "lora_A.weight"), "\" has no lora_B partner");
    const Tensor& tB = bit->second;
    const int64_t in = m.linear->in_features(), out = m.linear->out_features();
    const int64_t r = tA.rank() == 2 ? tA.dim(0) : -1;
    if (tA.rank() != 2 || tA.dim(1) != in)
      throw error(weights, ": tensor \"", peft_key(module, "lora_A.weight"), "\" has shape ", shape_str(tA.shape()),
                  ", expected [r, ", in, "] for this model (is the adapter for another base model?)");
    if (tB.shape() != Shape{out, r})
      throw error(weights, ": tensor \"", peft_key(module, "lora_B.weight"), "\" has shape ", shape_str(tB.shape()),
                  ", expected ", shape_str({out, r}), " (is the adapter for another base model?)");
    if (r != a.config.rank_for(module))
      throw error(weights, ": \"", peft_key(module, "lora_A.weight"), "\" has rank ", r, " but adapter_config.json says ",
                  a.config.rank_for(module));
    LoraPair p;
    p.layer = m.layer;
    p.target = m.target;
    p.module = module;
    p.r = r;
    p.scale = a.config.scale_for(module);
    p.A = tA;
    p.B = tB;
    a.pairs.push_back(std::move(p));
  }
  for (const auto& [module, tB] : B)
    if (!A.count(module)) throw error(weights, ": \"", peft_key(module, "lora_B.weight"), "\" has no lora_A partner");
  if (a.pairs.empty() && a.biases.empty()) throw error(weights, ": the adapter holds no LoRA tensors");
  std::sort(a.pairs.begin(), a.pairs.end(), [](const LoraPair& x, const LoraPair& y) {
    return std::pair(x.layer, static_cast<int>(x.target)) < std::pair(y.layer, static_cast<int>(y.target));
  });
  a.to(model.device());
  return a;
}

void Adapter::save(const std::string& dir) const {
  io::write_checkpoint_dir(dir, [&](const std::string& tmp) { write_files(tmp); },
                           nlohmann::json{{"kind", "adapter"}, {"format", "peft-lora"}});
}

void Adapter::write_files(const std::string& dir) const {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& p : pairs) {
    tensors.emplace_back(peft_key(p.module, "lora_A.weight"), p.A.to(Device::cpu()));
    tensors.emplace_back(peft_key(p.module, "lora_B.weight"), p.B.to(Device::cpu()));
  }
  for (const auto& b : biases) tensors.emplace_back(bias_key(b), b.value.to(Device::cpu()));
  nlohmann::json cfg = config.to_json();
  if (!config.all_linear && !config.target_regex) {
    // PEFT writes the set of short names it adapted; keep the user's list otherwise.
    cfg["target_modules"] = config.target_modules;
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
  for (auto& p : pairs) {
    out.push_back({p.module + ".lora_A", &p.A, &p.grad_A, &p.A_work});
    out.push_back({p.module + ".lora_B", &p.B, &p.grad_B, &p.B_work});
  }
  for (auto& b : biases) out.push_back({b.module + ".bias", &b.value, &b.grad, nullptr});
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

void Adapter::allocate_grads() {
  for (auto& p : parameters()) *p.grad = Tensor::zeros_like(*p.value);
}

void Adapter::make_working_copies(DType dtype) {
  for (auto& p : parameters())
    if (p.working) *p.working = dtype == p.value->dtype() ? Tensor() : ops::cast(*p.value, dtype);
}

}  // namespace lowrank::lora
