#pragma once
// A LoRA adapter as llama.cpp's LoRA GGUF (what convert_lora_to_gguf.py writes; llama-cli
// --lora FILE, llama-server's adapters, Ollama's ADAPTER): general.type "adapter", adapter.type
// "lora", adapter.lora.alpha, and per adapted weight "<llama.cpp name>.lora_a" [r, in] and
// ".lora_b" [out, r], with the row changes the base weight gets (model/gguf_export.h).
#include <string>

#include "lowrank/lora/adapter.h"
#include "lowrank/model/gguf_export.h"

namespace lowrank::lora {

struct GgufAdapterSummary {
  int64_t pairs = 0;
  double alpha = 0;       // adapter.lora.alpha: llama.cpp scales each pair by alpha / its rank
  int64_t folded = 0;     // pairs whose scale is not alpha / r (rsLoRA, alpha_pattern): folded into B
};

// Writes `adapter` (loaded for `model`) to `path`, atomically. llama.cpp applies plain LoRA only:
// DoRA, trained biases, modules_to_save copies, an unconverted PiSSA/OLoRA init and an embedding
// LoRA of a tied model are an Error that says to merge instead (`lowrank gguf --merge`).
GgufAdapterSummary write_gguf_adapter(const Adapter& adapter, const model::Model& model, const std::string& path,
                                      model::GgufOutType type, const std::string& name);

}  // namespace lowrank::lora
