#pragma once
// Random-weight models of any supported shape, for benchmarks and tests (no checkpoint needed).
#include "lowrank/model/model.h"

namespace lowrank::model {

// A Llama-family config from the main sizes (rope default, SiLU, untied unless `tie`).
ModelConfig llama_config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t intermediate,
                         int64_t vocab, int64_t context, bool tie = true);
// Weights ~ N(0, 1/fan_in) (embeddings N(0, 0.02²), norms 1, biases N(0, 0.02²)) in `dtype` on
// `device`. The values come from one block of 2^20 Philox normals tiled over each tensor, so even
// 8B-parameter models are made in seconds (values repeat; fine for timing, never zeros). With
// Quantization::Nf4 the blocks' projections are quantized as they are made (on the host).
Model random_model(const ModelConfig& config, uint64_t seed, Device device = Device::cpu(),
                   DType dtype = DType::F32, Quantization quantize = Quantization::None);
// The same with each part made directly on its device of `placement` (a model split over devices).
Model random_model(const ModelConfig& config, uint64_t seed, const Placement& placement, DType dtype,
                   Quantization quantize = Quantization::None);

}  // namespace lowrank::model
