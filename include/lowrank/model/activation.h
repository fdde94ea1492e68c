#pragma once
// The op-level activation for a config's hidden_act.
#include "lowrank/model/config.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {

inline ops::Act op_activation(Activation a) {
  switch (a) {
    case Activation::SiLU: return ops::Act::SiLU;
    case Activation::GeluTanh: return ops::Act::GeluTanh;
    case Activation::GeluErf: return ops::Act::GeluErf;
    case Activation::ReLU: return ops::Act::ReLU;
  }
  return ops::Act::SiLU;
}

}  // namespace lowrank::model
