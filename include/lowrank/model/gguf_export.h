#pragma once
// A model as a GGUF file for llama.cpp (and what runs on it: Ollama, LM Studio, llama-server),
// written as llama.cpp's convert_hf_to_gguf.py writes it: its architecture's keys, the tensors
// under llama.cpp's names and in the layout its kernels expect, the tokenizer (tokenizer/gguf_vocab.h).
// Also the per-tensor plan that LoRA adapters follow (lora/gguf_adapter.h), so that an adapter's
// B gets the same row changes as the weight it adapts.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/io/gguf.h"
#include "lowrank/model/model.h"

namespace lowrank::model {

// --outtype: the type of the 2-D weights (norms, biases, 1-D tensors and GPT-2's position table
// stay f32, and Q8_0 falls back to f16 for rows that are no multiple of 32, as the converter does).
enum class GgufOutType { F32, F16, BF16, Q8_0 };
GgufOutType parse_gguf_outtype(const std::string& name);  // f32|f16|bf16|q8_0; Error otherwise
std::string gguf_outtype_name(GgufOutType t);
// The ggml type a tensor of `rank` gets; `row` is its innermost dimension.
io::GgmlType gguf_tensor_type(GgufOutType t, int rank, int64_t row, bool keep_f32);
// general.file_type (llama_ftype) of an outtype.
uint32_t gguf_file_type(GgufOutType t);

// How one checkpoint tensor is written. value = (w + add) · row_scale, rows regrouped for
// permute_heads; a LoRA B of that module gets the row changes (permutation and row_scale) only.
struct GgufTensorPlan {
  std::string name;          // llama.cpp's: "blk.3.attn_q.weight"
  bool keep_f32 = false;     // norms, biases, GPT-2's position table
  int64_t permute_heads = 0; // Llama's q/k: each head's rows interleaved for ggml's RoPE (0: none)
  float add = 0;             // Gemma's norm weights: stored as w, llama.cpp multiplies by w itself
  float row_scale = 1;       // Gemma: the query scale llama.cpp does not know (query_pre_attn_scalar)
};

// llama.cpp's architecture name for the model ("llama" for Llama and Mistral, "qwen2", ...).
std::string gguf_arch_name(const ModelConfig& config);
// The plan of a checkpoint tensor (its Hugging Face name, `named_tensors`' names); nullopt for a
// tensor llama.cpp does not read. Throws Error for a name this mapping does not know.
std::optional<GgufTensorPlan> gguf_tensor_plan(const ModelConfig& config, const std::string& hf_name);
// The plan's row changes applied to a [rows, ...] tensor (a weight, a bias, a LoRA B), and `add`
// when `with_add`; returns a new f32 tensor.
Tensor apply_gguf_plan(const GgufTensorPlan& plan, const Tensor& t, bool with_add);

struct GgufExportOptions {
  GgufOutType type = GgufOutType::F32;
  std::string name;           // general.name (default: the folder's name)
  std::string chat_template;  // tokenizer.chat_template (empty: none)
  std::function<void(int64_t, int64_t)> progress;  // bytes written, bytes in all (io::GgufWriter::write)
};

// What write_gguf_model wrote, for the command's report.
struct GgufExportSummary {
  std::string arch;
  int64_t tensors = 0;
  std::string tokenizer;  // "gpt2 (llama-bpe)" or "none"
  std::vector<std::string> warnings;  // what llama.cpp will compute differently from transformers
};

// Writes `model` (its weights as they are now: merge adapters into it first) with the tokenizer of
// `source_dir` to `path`, atomically. Throws Error for what llama.cpp cannot represent (an
// architecture feature, a quantized model, a tokenizer it would split differently).
GgufExportSummary write_gguf_model(const Model& model, const std::string& source_dir, const std::string& path,
                                   const GgufExportOptions& options);
// The same keys and tokenizer without tensors (llama.cpp's vocab-only files: its tokenizer tests
// and `llama-tokenize` read them); needs only the config, not the weights.
GgufExportSummary write_gguf_vocab(const ModelConfig& config, const std::string& source_dir, const std::string& path,
                                   const GgufExportOptions& options);

}  // namespace lowrank::model
