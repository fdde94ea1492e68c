#pragma once
// Where the parts of a model live. One device holds everything, or, for bases larger than one GPU,
// the decoder layers are split into consecutive stages, one per device (pipeline parallel): the
// token embedding on the first stage's device, the final norm and the lm_head on the last's.
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/config.h"

namespace lowrank::model {

struct Placement {
  std::vector<Device> devices;       // [stages]: the device of each stage
  std::vector<int64_t> first_layer;  // [stages + 1]: stage s holds layers [first_layer[s], first_layer[s + 1])

  // Everything on `device` (one stage).
  static Placement single(Device device, int64_t num_layers);
  int stages() const { return static_cast<int>(devices.size()); }
  bool split() const { return stages() > 1; }
  int64_t num_layers() const { return first_layer.back(); }
  // The stage of decoder layer `layer`; -1 (the embedding) is the first stage's, num_layers (the
  // final norm and lm_head) the last's.
  int stage_of_layer(int64_t layer) const;
  Device device_of_layer(int64_t layer) const { return devices[stage_of_layer(layer)]; }
};

// Parameter bytes of each part of a model with config `c` in `dtype`: the embedding (with learned
// positions), one decoder layer (all layers have the same shapes), the final norm + lm_head (a tied
// lm_head counts too: a split keeps a copy of it on the last stage).
struct PartBytes {
  int64_t embed = 0, layer = 0, head = 0;
};
PartBytes part_bytes(const ModelConfig& c, DType dtype);

// Consecutive layers per device, balanced by parameter bytes (the embedding counts on the first
// stage, the lm_head on the last): stage s ends at the layer boundary nearest to (s + 1)/S of the
// total, with at least one layer per stage. Throws Error when there are fewer layers than devices.
Placement balance_layers(const ModelConfig& c, const std::vector<Device>& devices, DType dtype);

}  // namespace lowrank::model
