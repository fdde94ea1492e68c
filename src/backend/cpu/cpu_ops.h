#pragma once
// The CPU backend: f32 reference implementations of every op of lowrank/ops/op_list.inc, with the
// same signatures and semantics; lowrank::ops dispatches here for CPU tensors. Private to the
// library (and its tests, which use it as the reference).
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::cpu {

using ops::Act;
using ops::AdamWScalars;
using ops::AttentionShape;
using ops::ColumnBlock;
using ops::DecodeLayer;
using ops::DecodeRow;
using ops::DropoutDraws;
using ops::Gemm;
using ops::KVWrite;
using ops::LoraRows;
using ops::LoraRun;
using ops::LowRankUpdate;
using ops::RotaryRows;

#include "lowrank/ops/op_list.inc"

}  // namespace lowrank::cpu
