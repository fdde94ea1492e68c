#pragma once
// LoraConfig: what an adapter adapts and how, as PEFT's adapter_config.json says it.
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace lowrank::lora {

enum class BiasMode { None, All, LoraOnly };
// PEFT's init_lora_weights: true (kaiming-uniform A), "gaussian", "pissa" / "pissa_niter_N"
// (SVD, randomized with N subspace iterations), "olora" (QR). lora_init.h has the math.
enum class InitMode { Kaiming, Gaussian, Pissa, Olora };

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.0;
  // One dropout mask per distinct input instead of one per projection: q, k and v draw one mask
  // of the attention input, gate and up one of the MLP input (as loralib's MergedLinear does for a
  // fused qkv projection; PEFT's per-module nn.Dropout draws one per projection). Training only:
  // not a PEFT key, never written to adapter_config.json.
  bool dropout_per_input = false;
  // PEFT's target_modules: names matched against module paths (exact, or as a ".name" suffix),
  // or one regex that must match the whole path (target_regex), or "all-linear".
  std::vector<std::string> target_modules{"q_proj", "v_proj"};
  std::optional<std::string> target_regex;
  bool all_linear = false;
  // With all_linear: the embedding / output layers adapted too (`--targets all-linear,lm_head`;
  // PEFT's all-linear leaves them out, so the adapter writes the adapted names as a list).
  std::vector<std::string> outside_blocks;
  // PEFT's exclude_modules: modules that target_modules selects but that get no LoRA layer,
  // matched the same way (names as exact paths or ".name" suffixes, or one regex, exclude_regex).
  std::vector<std::string> exclude_modules;
  std::optional<std::string> exclude_regex;
  // PEFT's layers_to_transform / layers_pattern: only the blocks with these indices (empty: all).
  // A module's index is the number after the first ".<pattern>." in its path (any segment when
  // layers_pattern is empty: "model.layers.3.mlp.up_proj" -> 3). PEFT applies it to names matched
  // as ".name" suffixes; a name listed as the module's whole path is taken as it is.
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  // PEFT's modules_to_save: modules of which the adapter carries a whole trained copy (its file's
  // "<module>.weight"), used instead of the model's; a name selects the modules whose path ends
  // with it (PEFT's key.endswith). Read for the embedding and the output layer (adapter.h).
  std::vector<std::string> modules_to_save;
  bool saves(const std::string& path) const;  // some modules_to_save name selects `path`
  static bool save_name_selects(const std::string& name, const std::string& path);
  // No LoRA layer at all (target_modules empty, "--targets none"): with bias = all, bias-only
  // training (BitFit).
  bool has_targets() const { return all_linear || target_regex || !target_modules.empty(); }
  // Sets the targets from --targets: "q_proj,v_proj", "all-linear", "all-linear,lm_head" or "none".
  void set_targets(const std::string& text);
  bool use_rslora = false;
  bool fan_in_fan_out = false;
  BiasMode bias = BiasMode::None;
  InitMode init = InitMode::Kaiming;
  int64_t pissa_niter = 0;  // "pissa_niter_N": N > 0 uses the randomized SVD; 0: the full SVD
  bool use_dora = false;    // PEFT's use_dora: DoRA on every adapted linear layer (dora.cpp)
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;

  // Parses PEFT's adapter_config.json (unknown keys ignored); `source` names the file in errors.
  static LoraConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Parses PEFT's init_lora_weights name: kaiming (or true), gaussian, pissa, pissa_niter_N, olora.
  static void parse_init(const std::string& text, InitMode* init, int64_t* pissa_niter, const std::string& source);
  std::string init_name() const;  // the inverse of parse_init ("kaiming" for the default)

  // True if the module at `path` (e.g. "model.layers.0.self_attn.q_proj") is targeted.
  bool targets(const std::string& path) const;
  // The same for the embedding or the output layer (all-linear alone selects neither).
  bool targets_outside_blocks(const std::string& path) const;
  // True if `path` is in a block that layers_to_transform selects (always, when it is empty).
  bool in_selected_layers(const std::string& path) const;
  // True if the module name `name` selects `path` (the whole path, or its ".name" suffix).
  static bool name_selects(const std::string& name, const std::string& path);
  int64_t rank_for(const std::string& path) const;
  double alpha_for(const std::string& path) const;
  double scale_for(const std::string& path) const;  // alpha/r, or alpha/sqrt(r) with rsLoRA
  void validate(const std::string& source) const;   // r > 0, alpha > 0, 0 <= dropout < 1, ...

 private:
  // target_modules (or target_regex) selects `path`, with PEFT's layer rule.
  bool selects_listed(const std::string& path) const;
};

// PEFT's pattern rule: key matches `path` if path == key or path ends with "." + key (keys may be
// regexes, matched as "(.*\.)?key$").
bool pattern_matches(const std::string& key, const std::string& path);

}  // namespace lowrank::lora
