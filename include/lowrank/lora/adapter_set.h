#pragma once
// Several adapters active at once (`--adapter DIR[:SCALE]`, repeatable), applied unmerged.
#include <memory>
#include <string>
#include <vector>

#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_hook.h"

namespace lowrank::lora {

struct AdapterSpec {
  std::string dir;
  double scale = 1.0;
};
// "DIR" or "DIR:SCALE"; a suffix after the last ':' that is not a number is an Error unless the
// whole text names an existing folder.
AdapterSpec parse_adapter_spec(const std::string& text);

class AdapterSet {
 public:
  // Loads every adapter against `model` (attaching any trained biases to it).
  AdapterSet(const std::vector<std::string>& specs, model::Model& model);
  bool empty() const { return adapters_.empty(); }
  const std::vector<std::unique_ptr<Adapter>>& adapters() const { return adapters_; }
  const std::vector<double>& scales() const { return scales_; }
  const std::vector<std::string>& dirs() const { return dirs_; }  // the adapter folders, in order
  // A hook applying all of them, or nullptr when there are none.
  model::ProjectionHook* hook() { return hook_ ? &*hook_ : nullptr; }

 private:
  std::vector<std::unique_ptr<Adapter>> adapters_;
  std::vector<double> scales_;
  std::vector<std::string> dirs_;
  std::optional<LoraHook> hook_;
};

}  // namespace lowrank::lora
