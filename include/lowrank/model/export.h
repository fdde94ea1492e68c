#pragma once
// Writing a complete Hugging Face model folder (merge, --full training): config.json,
// model.safetensors (sharded above a size limit, with model.safetensors.index.json), and the
// source folder's tokenizer and generation files.
#include <string>

#include "lowrank/core/dtype.h"
#include "lowrank/model/model.h"

namespace lowrank::model {

struct ExportOptions {
  DType dtype = DType::F32;                 // weights are cast to this
  int64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
};

// Writes `model`'s weights into out_dir, copying config.json (with its dtype updated) and the
// tokenizer/generation files from source_dir. Each file is written atomically; the index (when
// sharded) and config.json last.
void write_model_folder(const Model& model, const std::string& source_dir, const std::string& out_dir,
                        const ExportOptions& options = {});

}  // namespace lowrank::model
