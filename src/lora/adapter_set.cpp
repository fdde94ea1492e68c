#include "lowrank/lora/adapter_set.h"

#include <cmath>

#include "lowrank/core/error.h"
#include "lowrank/core/log.h"
#include "lowrank/io/files.h"

namespace lowrank::lora {

AdapterSpec parse_adapter_spec(const std::string& text) {
  if (text.empty()) throw error("--adapter: empty value");
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || io::is_directory(text)) return {text, 1.0};
  const std::string dir = text.substr(0, colon), scale = text.substr(colon + 1);
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(scale, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != scale.size() || scale.empty() || !std::isfinite(value))
    throw error("--adapter ", text, ": scale '", scale, "' is not a number (expected DIR or DIR:SCALE)");
  // The scale multiplies the adapter's update in f32 (bf16 on CUDA): beyond f32's range it is inf.
  if (!std::isfinite(static_cast<float>(value)))
    throw error("--adapter ", text, ": scale ", scale, " is beyond the f32 range");
  return {dir, value};
}

AdapterSet::AdapterSet(const std::vector<std::string>& specs, model::Model& model) {
  std::vector<ActiveAdapter> active;
  for (const auto& s : specs) {
    AdapterSpec spec = parse_adapter_spec(s);
    auto a = std::make_unique<Adapter>(Adapter::load(spec.dir, model));
    if (!a->biases.empty()) {
      if (specs.size() > 1) log_warn(spec.dir, ": its trained biases replace the model's (the last adapter's win)");
      a->attach_biases(model);
    }
    if (!a->saved_modules.empty() && specs.size() > 1)
      log_warn(spec.dir, ": its modules_to_save copies replace the model's layers (the last adapter's win)");
    a->attach_base_layers(model);  // PEFT's saved embedding layers and modules_to_save copies
    active.push_back({a.get(), spec.scale});
    scales_.push_back(spec.scale);
    dirs_.push_back(spec.dir);
    adapters_.push_back(std::move(a));
  }
  if (!active.empty()) hook_.emplace(std::move(active));
}

}  // namespace lowrank::lora
