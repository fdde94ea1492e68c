#pragma once
// Connects training/eval data to the model folder's tokenizer (tokenizer.json) and chat template.
#include <optional>
#include <string>

#include "lowrank/train/dataset.h"

namespace lowrank::train {

// The model folder's tokenizer as a TextEncoder; nullopt when the folder has no tokenizer. Chat
// data uses `chat_template` when given (--chat-template, or an adapter's), else the folder's own.
std::optional<TextEncoder> make_text_encoder(const std::string& model_dir,
                                             const std::optional<std::string>& chat_template = std::nullopt);

}  // namespace lowrank::train
