#include "lowrank/train/weight_decay.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <string>

namespace lowrank::train {
namespace {

bool ends_component(const std::string& s, size_t end) { return end == s.size() || s[end] == '.'; }

// The weights and biases of every normalization layer of the model.
std::set<std::string> norm_tensor_names(const model::ModelWeights& w) {
  std::set<std::string> names;
  auto add = [&](const model::Norm& n) {
    if (!n.weight.defined()) return;
    names.insert(n.name + ".weight");
    if (n.bias.defined()) names.insert(n.name + ".bias");
  };
  for (const model::LayerWeights& l : w.layers)
    for (const model::Norm* n : {&l.attn_norm, &l.mlp_norm, &l.post_attn_norm, &l.post_mlp_norm, &l.q_norm, &l.k_norm})
      add(*n);
  add(w.final_norm);
  return names;
}

}  // namespace

bool decayed_by_name(std::string_view name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* word : {"bias", "layernorm", "rmsnorm"})
    if (s.find(word) != std::string::npos) return false;
  // r"(?:^|\.)norm(?:$|\.)" and r"_norm(?:$|\.)"
  for (size_t at = s.find("norm"); at != std::string::npos; at = s.find("norm", at + 1)) {
    if (!ends_component(s, at + 4)) continue;
    if (at == 0 || s[at - 1] == '.' || s[at - 1] == '_') return false;
  }
  return true;
}

void apply_decay_rule(std::vector<ParamRef>& params, const model::ModelWeights* weights) {
  const std::set<std::string> norms = weights ? norm_tensor_names(*weights) : std::set<std::string>{};
  for (ParamRef& p : params) p.decay = !norms.count(p.name) && decayed_by_name(p.name);
}

}  // namespace lowrank::train
