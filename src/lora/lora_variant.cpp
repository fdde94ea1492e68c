#include "lowrank/lora/lora_variant.h"

#include "variants.h"

namespace lowrank::lora {

const LoraVariant& lora_variant(VariantKind kind) {
  switch (kind) {
    case VariantKind::Linear: return linear_lora();
    case VariantKind::Dora: return dora();
    case VariantKind::Embedding: return embedding_lora();
  }
  LR_CHECK(false, "unknown LoRA variant ", static_cast<int>(kind));
  return linear_lora();
}

std::string_view variant_name(VariantKind kind) {
  switch (kind) {
    case VariantKind::Linear: return "LoRA";
    case VariantKind::Dora: return "DoRA";
    case VariantKind::Embedding: return "embedding LoRA";
  }
  return "?";
}

}  // namespace lowrank::lora
