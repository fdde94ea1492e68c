// Plain LoRA on a linear layer:
//   y += s · h Bᵀ with h = drop(x) Aᵀ, written before the frozen product, which the base GEMM
//   adds in its epilogue (beta = 1), or added to its output (beta = 1).
//   dB += s · dyᵀ h;  g = dy B;  dA += s · gᵀ drop(x);  d drop(x) = s · g A.
// With LoRA dropout the hook hands over x and the draws (fuses_dropout): the shrink and its
// backward apply them (ops::dropout_shrink, dropout_shrink_backward), drop(x) never written out.
// dB and dA (when not fused with dx) may run on the side stream, beside the input gradient.
#include "lowrank/ops/ops.h"
#include "lowrank/ops/side_work.h"
#include "variants.h"

namespace lowrank::lora {

using ops::ColumnBlock;

std::vector<LayerTensor> lora_ab_tensors(LoraPair& p, const char* a_key, const char* b_key, const char* a_name,
                                         const char* b_name) {
  return {{a_name, a_key, &p.A, &p.grad_A, &p.A_work, {p.r, p.in}},
          {b_name, b_key, &p.B, &p.grad_B, &p.B_work, {p.out, p.r}}};
}

namespace {

class LinearLora : public LoraVariant {
 public:
  std::vector<LayerTensor> tensors(LoraPair& p) const override {
    return lora_ab_tensors(p, "lora_A.weight", "lora_B.weight", "lora_A", "lora_B");
  }

  void forward(const LoraInput& in, Tensor& y, LoraSaved* saved) const override {
    Tensor h;
    if (in.dropout) ops::dropout_shrink(in.x_in, *in.dropout, in.A, h);  // [N, r]
    else ops::matmul_nt(in.x_in, in.A, h);
    if (in.first && in.addend) y = ops::matmul_nt_add(h, in.B, *in.addend, in.scale);  // y = s · h Bᵀ + residual
    else if (in.first) ops::matmul_nt(h, in.B, y, in.scale, 0.0f);                     // y = s · h Bᵀ
    else if (y.defined()) ops::matmul_nt(h, in.B, y, in.scale, 1.0f);                  // y += s · h Bᵀ
    if (saved) saved->h = h;
  }

  bool saves_without_output() const override { return true; }
  bool fuses_dropout() const override { return true; }

  void backward(LoraPair& p, const LoraInput& in, const LoraSaved& sv, const Tensor& dy, Tensor* dx_in,
                bool accumulate) const override {
    const Device dev = dy.device();
    // A and B may carry zero rows / columns up to the rank the GEMMs run at (rank_padding.h); the
    // gradients are those of the first p.r.
    const bool padded = in.A.dim(0) != p.r;
    {  // off the critical path: nothing before the optimizer reads dB
      const ops::SideWork side(dev, {dy, sv.h}, in.side_work);
      if (padded) ops::matmul_blocks(ops::Gemm::TN, ColumnBlock::all(dy), {sv.h, 0, p.r}, ColumnBlock::all(p.grad_B),
                                     in.scale, 1.0f);
      else ops::matmul_tn(dy, sv.h, p.grad_B, in.scale, 1.0f);  // dB += s · dyᵀ h       [out, r]
    }
    Tensor g;
    ops::matmul_nn(dy, in.B, g);                             // g = dy B             [N, r]
    if (in.dropout) {  // the same two products, dropout(x) drawn and s · g A masked block by block
      ops::dropout_shrink_backward(in.x_in, *in.dropout, g, in.A, p.grad_A, in.scale, dx_in, accumulate);
      return;
    }
    {
      const ops::SideWork side(dev, {g, in.x_in}, in.side_work);
      if (padded) ops::matmul_blocks(ops::Gemm::TN, {g, 0, p.r}, ColumnBlock::all(in.x_in), ColumnBlock::all(p.grad_A),
                                     in.scale, 1.0f);
      else ops::matmul_tn(g, in.x_in, p.grad_A, in.scale, 1.0f);  // dA += s · gᵀ drop(x) [r, in]
    }
    if (dx_in) ops::matmul_nn(g, in.A, *dx_in, in.scale, accumulate ? 1.0f : 0.0f);  // s · g A
  }

  void merge(const LoraPair& p, Tensor& weight, double user_scale) const override {
    // W [out, in] += s · B [out, r] · A [r, in]
    ops::matmul_nn(p.B, p.A, weight, static_cast<float>(p.scale * user_scale), 1.0f);
  }
};

}  // namespace

const LoraVariant& linear_lora() {
  static const LinearLora v;
  return v;
}

}  // namespace lowrank::lora
