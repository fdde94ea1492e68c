#pragma once
// The LoRA variants the registry (lora_variant.cpp) knows, one file each.
#include "lowrank/core/error.h"
#include "lowrank/lora/lora_variant.h"

namespace lowrank::lora {

const LoraVariant& linear_lora();     // linear_lora.cpp
const LoraVariant& dora();            // dora.cpp
const LoraVariant& embedding_lora();  // embedding_lora.cpp

// The A and B entries every variant starts its tensors() with.
std::vector<LayerTensor> lora_ab_tensors(LoraPair& p, const char* a_key, const char* b_key, const char* a_name,
                                         const char* b_name);

}  // namespace lowrank::lora
