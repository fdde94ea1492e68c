#pragma once
// Connects training/eval data to the model folder's tokenizer (tokenizer.json) and chat template.
#include <optional>
#include <string>

#include "lowrank/train/dataset.h"

namespace lowrank::train {

// The model folder's tokenizer as a TextEncoder; nullopt when the folder has no tokenizer.
std::optional<TextEncoder> make_text_encoder(const std::string& model_dir);

}  // namespace lowrank::train
