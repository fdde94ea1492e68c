// LoRA on the token embedding, as PEFT's lora.Embedding: with lora_embedding_A [r, V] and
// lora_embedding_B [d, r], the rows for ids get x += s · Aᵀ[ids] Bᵀ (no dropout: PEFT applies
// none to embeddings). Backward: h = Aᵀ[ids] [N, r]; dB += s · dxᵀ h; dAᵀ[ids] += s · dx B
// (a scatter-add into the columns of A). Merge: E [V, d] += s · Aᵀ Bᵀ.
#include "lowrank/ops/ops.h"
#include "variants.h"

namespace lowrank::lora {
namespace {

class EmbeddingLora : public LoraVariant {
 public:
  std::vector<LayerTensor> tensors(LoraPair& p) const override {
    return lora_ab_tensors(p, "lora_embedding_A", "lora_embedding_B", "lora_embedding_A", "lora_embedding_B");
  }

  void forward(const LoraInput& in, Tensor& y, LoraSaved* saved) const override {
    LR_CHECK(in.ids, "embedding LoRA without token ids");
    Tensor h = ops::embedding(ops::transpose2d(in.A), *in.ids);  // Aᵀ[ids]  [N, r]
    ops::matmul_nt(h, in.B, y, in.scale, 1.0f);                   // y += s · h Bᵀ
    if (saved) saved->h = h;
  }

  // Token ids have no gradient: dx_in stays untouched.
  void backward(LoraPair& p, const LoraInput& in, const LoraSaved& sv, const Tensor& dy, Tensor* /*dx_in*/,
                bool /*accumulate*/) const override {
    ops::matmul_tn(dy, sv.h, p.grad_B, in.scale, 1.0f);  // dB += s · dyᵀ h   [d, r]
    Tensor g;
    ops::matmul_nn(dy, in.B, g);                          // g = dy B         [N, r]
    Tensor grad_At = Tensor::zeros({p.in, p.r}, DType::F32, g.device());
    ops::embedding_backward_(grad_At, *in.ids, g);        // rows of Aᵀ at ids
    ops::add_scaled_(p.grad_A, ops::transpose2d(grad_At), in.scale);
  }

  void merge(const LoraPair& p, Tensor& weight, double user_scale) const override {
    // E [V, d] += s · A [r, V]ᵀ · Bᵀ [r, d]
    ops::matmul_tn(p.A, ops::transpose2d(p.B), weight, static_cast<float>(p.scale * user_scale), 1.0f);
  }
};

}  // namespace

const LoraVariant& embedding_lora() {
  static const EmbeddingLora v;
  return v;
}

}  // namespace lowrank::lora
