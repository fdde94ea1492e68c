#pragma once
// The weights of a decoder-only transformer, mapped from checkpoint names and validated.
// Every projection is stored as [out, in] (GPT-2's Conv1D [in, out] is transposed at load), in the
// compute dtype (f32 on the CPU), or — the decoder blocks' projections under --quantize nf4 — in NF4.
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/target.h"
#include "lowrank/model/config.h"
#include "lowrank/model/nf4.h"
#include "lowrank/model/placement.h"

namespace lowrank::model {

// How the frozen projections of the decoder blocks are held (--quantize; KeepBf16 is no flag).
enum class Quantization {
  None,
  Nf4,
  // CPU inference (generate, eval, serve): a projection the checkpoint stores in bf16 stays bf16 —
  // the same values as its f32 copy in half the bytes, which a decode step reads once per token;
  // the CPU's matrix products read it directly (cpu::matmul_nt), everything else through
  // compute_weight()'s f32 copy. Training keeps f32 (its backward reads the weights too).
  KeepBf16,
};
// "none" or "nf4" (the --quantize values); anything else is an Error naming `flag`.
Quantization parse_quantization(const std::string& name, const char* flag = "--quantize");
// What the inference commands (generate, eval, serve) load `model_dir` with: --quantize's choice;
// for "none" on the CPU, KeepBf16 when the checkpoint is bf16 and its f32 copy would take more than
// half of the machine's memory. (Otherwise f32: bf16 weights widened as they are read decode ~8%
// slower where the cores bound a decode step — a 2-vCPU machine —, 9–49% faster where memory
// does — the GPU box's 16-core CPU —, bench/RESULTS.md 2026-12-05; f32 is the safe default.)
Quantization inference_quantization(const std::string& flag_value, Device device, const std::string& model_dir);

struct Linear {
  Tensor weight;  // [out, in]; undefined when the weight is quantized
  Tensor bias;    // [out], or undefined (never quantized)
  std::string name;  // checkpoint module path, e.g. "model.layers.0.self_attn.q_proj"
  Target target = Target::Count;  // what LoRA and the projection hook call it (set at load)
  bool transposed_in_checkpoint = false;  // GPT-2 Conv1D stores [in, out]
  Nf4Weight nf4{};  // the weight in NF4 (--quantize nf4), else empty (last: aggregate inits leave it out)

  bool quantized() const { return nf4.defined(); }
  bool defined() const { return weight.defined() || quantized(); }
  int64_t in_features() const { return quantized() ? nf4.shape[1] : weight.dim(1); }
  int64_t out_features() const { return quantized() ? nf4.shape[0] : weight.dim(0); }
  // The weight [out, in] as the GEMMs read it: `weight` itself, or the NF4 weight dequantized into a
  // temporary in the compute dtype (freed after use: the caching allocator hands the same memory
  // to the next projection, so only one dequantized weight is alive at a time); a bf16 weight on
  // the CPU (Quantization::KeepBf16) as an f32 temporary.
  Tensor compute_weight() const {
    if (quantized()) return nf4_dequantize(nf4);
    return held_in_bf16_on_cpu() ? weight.to(DType::F32) : weight;
  }
  // What the forward's frozen product reads: the bf16 weight itself on the CPU (its matrix product
  // reads bf16), else compute_weight().
  Tensor gemm_weight() const { return held_in_bf16_on_cpu() ? weight : compute_weight(); }
  bool held_in_bf16_on_cpu() const {
    return weight.defined() && weight.dtype() == DType::BF16 && weight.device().is_cpu();
  }
};

struct Norm {
  Tensor weight;  // [d]
  Tensor bias;    // [d] (LayerNorm) or undefined (RMSNorm)
  std::string name;
};

struct LayerWeights {
  Norm attn_norm;  // input_layernorm / ln_1
  Norm mlp_norm;   // post_attention_layernorm / ln_2 (Gemma: pre_feedforward_layernorm)
  Norm post_attn_norm, post_mlp_norm;  // Gemma 2/3 only: post_attention_layernorm, post_feedforward_layernorm
  Norm q_norm, k_norm;  // Qwen3, Gemma 3 only: [head_dim]
  // Llama family: q, k, v, o, gate, up, down. Phi-3: qkv (qkv_proj [q_dim + 2 kv_dim, d]), o,
  // gate_up (gate_up_proj [2 I, d], gate rows first), down. GPT-2: qkv (c_attn, [3d, d]), o
  // (attn.c_proj), up (c_fc), down (mlp.c_proj). Undefined slots are absent in the family.
  Linear q, k, v, qkv, o, gate, up, gate_up, down;

  // Every slot, defined or not, in module order (the order of adaptable modules).
  std::vector<const Linear*> projections() const;
  // The projection LoRA target t refers to in this layer (nullptr if the architecture has none).
  Linear* projection(Target t);
  const Linear* projection(Target t) const;
};

struct ModelWeights {
  Tensor embed;      // [vocab, d]
  Tensor positions;  // [max_positions, d] (GPT-2 learned positions) or undefined
  std::vector<LayerWeights> layers;
  Norm final_norm;
  Tensor lm_head;    // [vocab, d]; shares embed's storage when tied
  std::string embed_name, lm_head_name;
};

// Maps and validates the checkpoint's tensors for `config`. A missing tensor or one of the wrong
// shape is an Error naming the file, the tensor, and the expected and actual shapes.
// With Quantization::Nf4 the blocks' projections are quantized as they are read (model/nf4.h;
// embeddings, norms, biases and the lm_head stay dense, as in PEFT + bitsandbytes' QLoRA setup).
ModelWeights load_weights(const ModelConfig& config, const io::TensorStore& store, DType compute = DType::F32,
                          Device device = Device::cpu(), Quantization quantize = Quantization::None);
// Quantizes a dense projection in place (its weight read on the host, the NF4 form on its device).
void quantize_linear(Linear& l, Quantization quantize);
// Parameters of the model (a quantized weight counts its dense shape).
int64_t parameter_count(const ModelWeights& w);
// The same with each part on its device of `placement` (a model split over devices).
ModelWeights load_weights(const ModelConfig& config, const io::TensorStore& store, DType compute,
                          const Placement& placement, Quantization quantize = Quantization::None);

// Every weight tensor with its checkpoint name, live (Conv1D in our [out, in] layout); a tied
// lm_head is listed once, as the embedding. Quantized weights are left out (they are not tensors
// of the checkpoint any more; --full and export refuse quantized models).
std::vector<std::pair<std::string, Tensor>> named_tensors(const ModelWeights& w);
// The same for one decoder layer (its part of the list above, in that order).
std::vector<std::pair<std::string, Tensor>> named_tensors(const LayerWeights& l);
// All (checkpoint name, tensor) pairs in checkpoint layout (Conv1D transposed back), for export.
std::vector<std::pair<std::string, Tensor>> checkpoint_tensors(const ModelConfig& config, const ModelWeights& w);

}  // namespace lowrank::model
