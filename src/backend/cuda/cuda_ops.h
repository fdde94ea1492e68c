#pragma once
// The CUDA backend: every op of lowrank/ops/op_list.inc for tensors on cuda:N, f32 or bf16 (fp32
// accumulation and statistics), with the same signatures and semantics; lowrank::ops dispatches
// here for CUDA tensors. Only present in builds with LOWRANK_WITH_CUDA (docs/cuda.md). Private to
// the library (and its tests).
#include <cstdint>
#include <vector>

#include "lowrank/backend/cuda/attention_path.h"
#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::cuda {

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

}  // namespace lowrank::cuda
