#include "lowrank/lora/config.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "module_regex.h"

namespace lowrank::lora {

bool pattern_matches(const std::string& key, const std::string& path) {
  if (path == key) return true;
  if (path.size() > key.size() && path.compare(path.size() - key.size(), key.size(), key) == 0 &&
      path[path.size() - key.size() - 1] == '.')
    return true;
  // PEFT: re.fullmatch(f".*\.{key}$", path) for patterns; a key that is no regex matches only as
  // a plain name (handled above).
  return regex_full_match("(.*\\.)?(" + key + ")", path).value_or(false);
}

namespace {

// PEFT's module matching: `names` as whole paths or ".name" suffixes, or `regex` (the field's name
// for its error) matching the whole path.
bool module_matches(const std::vector<std::string>& names, const std::optional<std::string>& regex,
                    const char* field, const std::string& path) {
  if (regex) {
    std::string why;
    const auto m = regex_full_match(*regex, path, &why);
    if (!m) throw error(field, ": invalid regular expression \"", *regex, "\": ", why);
    return *m;
  }
  for (const auto& t : names)
    if (path == t || (path.size() > t.size() && path.compare(path.size() - t.size(), t.size(), t) == 0 &&
                      path[path.size() - t.size() - 1] == '.'))
      return true;
  return false;
}

}  // namespace

bool LoraConfig::in_selected_layers(const std::string& path) const {
  if (layers_to_transform.empty()) return true;
  // PEFT: re.match(r".*?\.[^.]*\.(\d+)\.", key), or with each pattern in turn r".*?\.{pattern}\.(\d+)\.";
  // lazy, so the first numbered segment counts (a layer's, not an expert's inside it).
  std::optional<std::string> index;
  if (layers_pattern.empty()) index = regex_match_group1(R"(.*?\.[^.]*\.(\d+)\.)", path);
  for (const auto& pattern : layers_pattern) {
    std::string why;
    index = regex_match_group1(".*?\\." + pattern + "\\.(\\d+)\\.", path, &why);
    if (!why.empty()) throw error("layers_pattern: invalid regular expression \"", pattern, "\": ", why);
    if (index) break;
  }
  if (!index || index->size() > 9) return false;  // no block index (or one no block list can hold)
  return std::find(layers_to_transform.begin(), layers_to_transform.end(), std::stoll(*index)) !=
         layers_to_transform.end();
}

bool LoraConfig::selects_listed(const std::string& path) const {
  if (target_regex) return module_matches({}, target_regex, "target_modules", path);
  if (std::find(target_modules.begin(), target_modules.end(), path) != target_modules.end()) return true;
  return module_matches(target_modules, std::nullopt, "target_modules", path) && in_selected_layers(path);
}

bool LoraConfig::targets(const std::string& path) const {
  if (module_matches(exclude_modules, exclude_regex, "exclude_modules", path)) return false;
  if (all_linear) return in_selected_layers(path);  // the caller only asks about linear layers of the blocks
  return selects_listed(path);
}

bool LoraConfig::save_name_selects(const std::string& name, const std::string& path) { return path.ends_with(name); }

bool LoraConfig::saves(const std::string& path) const {
  return std::any_of(modules_to_save.begin(), modules_to_save.end(),
                     [&](const std::string& name) { return save_name_selects(name, path); });
}

bool LoraConfig::name_selects(const std::string& name, const std::string& path) {
  return module_matches({name}, std::nullopt, "target_modules", path);
}

bool LoraConfig::targets_outside_blocks(const std::string& path) const {
  if (module_matches(exclude_modules, exclude_regex, "exclude_modules", path)) return false;
  if (all_linear) return module_matches(outside_blocks, std::nullopt, "target_modules", path);
  return selects_listed(path);
}

int64_t LoraConfig::rank_for(const std::string& path) const {
  for (const auto& [k, v] : rank_pattern)
    if (pattern_matches(k, path)) return v;
  return r;
}

double LoraConfig::alpha_for(const std::string& path) const {
  for (const auto& [k, v] : alpha_pattern)
    if (pattern_matches(k, path)) return v;
  return alpha;
}

double LoraConfig::scale_for(const std::string& path) const {
  const double rank = static_cast<double>(rank_for(path));
  return use_rslora ? alpha_for(path) / std::sqrt(rank) : alpha_for(path) / rank;
}

namespace {

// alpha / r scales B A x in f32 (bf16 on CUDA): an alpha beyond the f32 range makes the scale
// infinite and every output NaN.
bool valid_alpha(double a) { return a > 0 && std::isfinite(static_cast<float>(a)); }

}  // namespace

void LoraConfig::validate(const std::string& src) const {
  if (r <= 0) throw error(src, ": r must be positive, got ", r);
  if (!valid_alpha(alpha)) throw error(src, ": lora_alpha must be positive and within the f32 range, got ", alpha);
  if (!(dropout >= 0 && dropout < 1)) throw error(src, ": lora_dropout must be in [0, 1), got ", dropout);
  for (const auto& [k, v] : rank_pattern)
    if (v <= 0) throw error(src, ": rank_pattern[\"", k, "\"] must be positive, got ", v);
  for (const auto& [k, v] : alpha_pattern)
    if (!valid_alpha(v))
      throw error(src, ": alpha_pattern[\"", k, "\"] must be positive and within the f32 range, got ", v);
  if (!has_targets() && bias == BiasMode::None && modules_to_save.empty())
    throw error(src, ": no target_modules (and bias \"none\", no modules_to_save): nothing to train; bias-only "
                     "training (BitFit) is --targets none --bias all");
  if (!layers_pattern.empty() && layers_to_transform.empty())
    throw error(src, ": layers_pattern needs layers_to_transform (the block indices to adapt)");
  for (const int64_t i : layers_to_transform)
    if (i < 0) throw error(src, ": layers_to_transform holds block indices, not negative numbers, got ", i);
  if (!layers_to_transform.empty() && target_regex)
    throw error(src, ": layers_to_transform cannot be used with target_modules as a regular expression (PEFT's "
                     "rule); write the regex to select the layers instead");
  if (!layers_to_transform.empty() && all_linear && !outside_blocks.empty())
    throw error(src, ": layers_to_transform selects blocks; the embedding and the output layer are outside them "
                     "(leave them out of --targets, or list the blocks' modules by name)");
  if (!has_targets() && bias == BiasMode::LoraOnly)
    throw error(src, ": bias \"lora_only\" with no target_modules trains nothing; bias-only training is bias \"all\"");
}

void LoraConfig::parse_init(const std::string& text, InitMode* init, int64_t* niter, const std::string& src) {
  *niter = 0;
  if (text == "kaiming" || text == "true") *init = InitMode::Kaiming;
  else if (text == "gaussian") *init = InitMode::Gaussian;
  else if (text == "olora") *init = InitMode::Olora;
  else if (text == "pissa") *init = InitMode::Pissa;
  else if (text.rfind("pissa_niter_", 0) == 0) {
    const std::string n = text.substr(12);
    if (n.empty() || n.size() > 6 || n.find_first_not_of("0123456789") != std::string::npos)
      throw error(src, ": init \"", text, "\": expected pissa_niter_N with N a whole number");
    *init = InitMode::Pissa;
    *niter = std::stoll(n);
  } else {
    throw error(src, ": init must be kaiming, gaussian, pissa, pissa_niter_N or olora, got \"", text, "\"");
  }
}

std::string LoraConfig::init_name() const {
  switch (init) {
    case InitMode::Kaiming: return "kaiming";
    case InitMode::Gaussian: return "gaussian";
    case InitMode::Olora: return "olora";
    case InitMode::Pissa: return pissa_niter > 0 ? "pissa_niter_" + std::to_string(pissa_niter) : "pissa";
  }
  return "kaiming";
}

void LoraConfig::set_targets(const std::string& text) {
  all_linear = false;
  target_modules.clear();
  target_regex.reset();
  outside_blocks.clear();
  if (text == "none") return;  // no LoRA layer (bias-only training)
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (item == "all-linear") all_linear = true;
    else if (!item.empty()) target_modules.push_back(item);
  if (all_linear) outside_blocks = std::exchange(target_modules, {});  // Adapter::create checks what they name
  if (!all_linear && target_modules.empty())
    throw error("--targets: expected module names such as q_proj,v_proj, all-linear or all-linear,lm_head");
}

namespace {

// A module list as PEFT writes target_modules / exclude_modules: a list of names, or one regex.
void read_modules(const nlohmann::json& v, const char* key, const std::string& src, std::vector<std::string>& names,
                  std::optional<std::string>& regex) {
  if (v.is_string()) {
    regex = v.get<std::string>();
  } else if (v.is_array()) {
    for (const auto& t : v) {
      if (!t.is_string()) throw error(src, ": ", key, " must hold strings");
      names.push_back(t.get<std::string>());
    }
  } else {
    throw error(src, ": ", key, " must be a list of names or a string");
  }
}

LoraConfig parse_lora_config(const nlohmann::json& j, const std::string& src) {
  if (!j.is_object()) throw error(src, ": expected a JSON object");
  LoraConfig c;
  const std::string type = j.value("peft_type", std::string("LORA"));
  if (type != "LORA") throw error(src, ": peft_type \"", type, "\" is not supported (only LORA)");
  auto number = [&](const char* key, double fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_number()) throw error(src, ": \"", key, "\" must be a number, got ", it->dump());
    return it->get<double>();
  };
  auto flag = [&](const char* key) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return false;
    if (!it->is_boolean()) throw error(src, ": \"", key, "\" must be true or false");
    return it->get<bool>();
  };
  if (!j.contains("r")) throw error(src, ": missing required key \"r\"");
  if (!j["r"].is_number_integer()) throw error(src, ": \"r\" must be an integer, got ", j["r"].dump());
  c.r = j["r"].get<int64_t>();
  c.alpha = number("lora_alpha", 8.0);
  c.dropout = number("lora_dropout", 0.0);
  c.use_rslora = flag("use_rslora");
  c.fan_in_fan_out = flag("fan_in_fan_out");
  c.use_dora = flag("use_dora");
  const std::string bias = j.contains("bias") && j["bias"].is_string() ? j["bias"].get<std::string>() : "none";
  if (bias == "none") c.bias = BiasMode::None;
  else if (bias == "all") c.bias = BiasMode::All;
  else if (bias == "lora_only") c.bias = BiasMode::LoraOnly;
  else throw error(src, ": bias must be none, all or lora_only, got \"", bias, "\"");
  // Loading needs no init (the tensors are in the file); a known name is kept for the record.
  if (auto it = j.find("init_lora_weights"); it != j.end() && it->is_string()) {
    try {
      LoraConfig::parse_init(it->get<std::string>(), &c.init, &c.pissa_niter, src);
    } catch (const Error&) {  // corda, loftq, eva, ...: nothing for us to do when loading
    }
  }
  c.target_modules.clear();
  auto tm = j.find("target_modules");
  if (tm == j.end() || tm->is_null()) throw error(src, ": missing \"target_modules\"");
  if (*tm == "all-linear") c.all_linear = true;
  else read_modules(*tm, "target_modules", src, c.target_modules, c.target_regex);
  if (auto ex = j.find("exclude_modules"); ex != j.end() && !ex->is_null())
    read_modules(*ex, "exclude_modules", src, c.exclude_modules, c.exclude_regex);
  if (j.contains("layer_replication") && !j["layer_replication"].is_null())
    throw error(src, ": \"layer_replication\" is not supported");
  if (auto it = j.find("layers_to_transform"); it != j.end() && !it->is_null()) {  // an int or a list of ints
    for (const auto& v : it->is_array() ? *it : nlohmann::json::array({*it})) {
      if (!v.is_number_integer()) throw error(src, ": layers_to_transform must be an integer or a list of integers");
      c.layers_to_transform.push_back(v.get<int64_t>());
    }
  }
  if (auto it = j.find("layers_pattern"); it != j.end() && !it->is_null()) {  // a name or a list of names
    for (const auto& v : it->is_array() ? *it : nlohmann::json::array({*it})) {
      if (!v.is_string()) throw error(src, ": layers_pattern must be a string or a list of strings");
      if (!v.get<std::string>().empty()) c.layers_pattern.push_back(v.get<std::string>());  // "": any (PEFT)
    }
  }
  // PEFT options that change what the adapter computes: ignoring them would apply another adapter
  // than the one trained (aLoRA only after its invocation tokens, QALoRA on pooled inputs, a bias
  // on lora_B, LoRA on parameters rather than modules, trained token rows).
  for (const char* key : {"lora_bias", "use_qalora"})
    if (flag(key)) throw error(src, ": \"", key, "\": true is not supported");
  for (const char* key : {"alora_invocation_tokens", "target_parameters", "trainable_token_indices"})
    if (auto it = j.find(key); it != j.end() && !it->is_null() && !it->empty())
      throw error(src, ": \"", key, "\" is not supported");
  if (auto it = j.find("modules_to_save"); it != j.end() && !it->is_null()) {  // a list of names (or one name)
    for (const auto& v : it->is_array() ? *it : nlohmann::json::array({*it})) {
      if (!v.is_string() || v.get<std::string>().empty())
        throw error(src, ": modules_to_save must be a list of module names, got ", it->dump());
      c.modules_to_save.push_back(v.get<std::string>());
    }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (auto it = j.find(key); it != j.end() && !it->is_null() && !it->is_object())
      throw error(src, ": ", key, " must be an object of {pattern: value}, got ", it->dump());
  if (auto rp = j.find("rank_pattern"); rp != j.end() && rp->is_object())
    for (auto& [k, v] : rp->items()) {
      if (!v.is_number_integer()) throw error(src, ": rank_pattern values must be integers");
      c.rank_pattern[k] = v.get<int64_t>();
    }
  if (auto ap = j.find("alpha_pattern"); ap != j.end() && ap->is_object())
    for (auto& [k, v] : ap->items()) {
      if (!v.is_number()) throw error(src, ": alpha_pattern values must be numbers");
      c.alpha_pattern[k] = v.get<double>();
    }
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
  c.validate(src);
  return c;
}

}  // namespace

LoraConfig LoraConfig::from_json(const nlohmann::json& j, const std::string& src) {
  try {
    return parse_lora_config(j, src);
  } catch (const nlohmann::json::exception& e) {  // a value of another type than the key needs
    throw error(src, ": ", io::json_error_text(e));
  }
}

nlohmann::json LoraConfig::to_json() const {
  nlohmann::json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = r;
  j["lora_alpha"] = alpha;
  j["lora_dropout"] = dropout;
  if (all_linear && outside_blocks.empty()) j["target_modules"] = "all-linear";
  else if (all_linear) {  // no PEFT form: Adapter::save writes the adapted modules' names instead
    j["target_modules"] = outside_blocks;
    j["target_modules"].insert(j["target_modules"].begin(), "all-linear");
  }
  else if (target_regex) j["target_modules"] = *target_regex;
  else j["target_modules"] = target_modules;
  if (exclude_regex) j["exclude_modules"] = *exclude_regex;
  else if (!exclude_modules.empty()) j["exclude_modules"] = exclude_modules;
  else j["exclude_modules"] = nullptr;
  j["use_rslora"] = use_rslora;
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["bias"] = bias == BiasMode::None ? "none" : bias == BiasMode::All ? "all" : "lora_only";
  // PiSSA / OLoRA adapters are saved converted (lora_init.h): they load as plain LoRA, so PEFT
  // must not run the SVD again (its docs save them with init_lora_weights=True too).
  j["init_lora_weights"] = init == InitMode::Gaussian ? nlohmann::json("gaussian") : nlohmann::json(true);
  j["rank_pattern"] = rank_pattern;
  j["alpha_pattern"] = alpha_pattern;
  j["base_model_name_or_path"] = base_model_name_or_path;
  j["inference_mode"] = true;
  j["use_dora"] = use_dora;
  j["modules_to_save"] = modules_to_save.empty() ? nlohmann::json() : nlohmann::json(modules_to_save);
  j["layers_to_transform"] = layers_to_transform.empty() ? nlohmann::json() : nlohmann::json(layers_to_transform);
  j["layers_pattern"] = layers_pattern.empty() ? nlohmann::json() : nlohmann::json(layers_pattern);
  j["revision"] = nullptr;
  j["lora_bias"] = false;
  return j;
}

}  // namespace lowrank::lora
