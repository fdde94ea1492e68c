// LoRA → GGUF, as convert_lora_to_gguf.py (its LoraTorchTensor routes the base model's row changes
// to lora_B; the embedding's lora_A is transposed, llama.cpp gathers its rows by token id).
#include "lowrank/lora/gguf_adapter.h"

#include <cmath>

#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {
namespace {

const char* kMergeHint = "; write the merged model instead (lowrank gguf --merge)";

}  // namespace

GgufAdapterSummary write_gguf_adapter(const Adapter& adapter, const model::Model& model, const std::string& path,
                                      model::GgufOutType type, const std::string& name) {
  const model::ModelConfig& c = model.config();
  const LoraConfig& cfg = adapter.config;
  if (!adapter.biases.empty()) throw error("the adapter trains biases (bias=", cfg.bias == BiasMode::All ? "all" : "lora_only",
                                           "), which a llama.cpp LoRA cannot hold", kMergeHint);
  if (!adapter.saved_modules.empty())
    throw error("the adapter holds modules_to_save copies (", adapter.saved_modules.front().module,
                "), which a llama.cpp LoRA cannot hold", kMergeHint);
  if ((cfg.init == InitMode::Pissa || cfg.init == InitMode::Olora) && !adapter.pairs.empty() && !adapter.pairs.front().A_init.defined())
    throw error("the adapter was saved with init_lora_weights \"", cfg.init_name(),
                "\" unconverted: it applies to a residual of the base model", kMergeHint);
  if (cfg.alpha == 0) throw error("lora_alpha 0: llama.cpp reads alpha 0 as 'no alpha'", kMergeHint);

  GgufAdapterSummary summary;
  summary.alpha = cfg.alpha;
  io::GgufWriter w;
  w.set("general.architecture", io::GgufValue::string(model::gguf_arch_name(c)));
  w.set("general.type", io::GgufValue::string("adapter"));
  w.set("adapter.type", io::GgufValue::string("lora"));
  w.set("adapter.lora.alpha", io::GgufValue::f32(static_cast<float>(cfg.alpha)));
  if (!name.empty()) w.set("general.name", io::GgufValue::string(name));
  w.set("general.quantization_version", io::GgufValue::u32(2));
  for (const LoraPair& p : adapter.pairs) {
    if (p.kind == VariantKind::Dora) throw error(p.module, ": DoRA, which llama.cpp does not apply", kMergeHint);
    const bool embedding = p.kind == VariantKind::Embedding;
    if (embedding && c.tie_word_embeddings)
      throw error(p.module, ": a LoRA of a tied embedding; llama.cpp would apply it to the output layer as well", kMergeHint);
    const auto plan = model::gguf_tensor_plan(c, p.module + ".weight");
    if (!plan) throw error(p.module, ": llama.cpp's ", model::gguf_arch_name(c), " has no such weight", kMergeHint);
    if (plan->name == "output.weight" && c.tie_word_embeddings)
      throw error(p.module, ": a LoRA of a tied lm_head, which llama.cpp's file has no tensor for", kMergeHint);
    // llama.cpp multiplies B·A by alpha / r; other scales (rsLoRA, alpha_pattern) go into B.
    const double llama_scale = cfg.alpha / static_cast<double>(p.r);
    const double fold = p.scale / llama_scale;
    model::GgufTensorPlan rows = *plan;
    rows.add = 0;
    if (std::fabs(fold - 1) > 1e-12) {
      rows.row_scale = static_cast<float>(rows.row_scale * fold);
      ++summary.folded;
    }
    // The embedding's A [r, V] is written transposed: llama.cpp gathers its rows by token id.
    const Tensor A = embedding ? ops::transpose2d(p.A.to(Device::cpu()).to(DType::F32)) : p.A.to(Device::cpu()).to(DType::F32);
    const Tensor B = model::apply_gguf_plan(rows, p.B, false);
    w.add_tensor(plan->name + ".lora_a", A, model::gguf_tensor_type(type, A.rank(), A.dim(-1), false));
    w.add_tensor(plan->name + ".lora_b", B, model::gguf_tensor_type(type, B.rank(), B.dim(-1), false));
    ++summary.pairs;
  }
  if (summary.pairs == 0) throw error("the adapter has no LoRA layers");
  w.write(path);
  return summary;
}

}  // namespace lowrank::lora
