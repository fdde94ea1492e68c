// DoRA (weight-decomposed LoRA, arXiv 2402.09353) exactly as PEFT 0.21 computes it (use_dora):
//   n = ||W0 + s·B·A|| per output row, detached (no gradient flows through it: the paper's §4.3)
//   c = m / n                        m: lora_magnitude_vector [out], trained
//   y += (c - 1) ⊙ (x' W0ᵀ) + c ⊙ s · (x' Aᵀ) Bᵀ      x' = drop(x); the bias stays outside
// so that without dropout y = b + c ⊙ x (W0 + s·B·A)ᵀ. Backward, with g' = dy ⊙ c:
//   dm = Σ_rows dy ⊙ (x' W0ᵀ + s · h Bᵀ) / n;  dB += s · g'ᵀ h;  dA += s · (g' B)ᵀ x'
//   d x' = ((c - 1) ⊙ dy) W0 + s · (g' B) A        (the base GEMM adds dy W0 itself)
// Merge as PEFT: W = (m / ||W0 + s·B·A||) ⊙ (W0 + s·B·A) row by row.
// Built from backend-neutral ops only, so it runs on every device: 1/n is RMSNorm's saved rstd of
// the rows of W0 + s·B·A (eps 0) over sqrt(in); per-column scalings multiply by a [rows, out]
// broadcast of the vector (add_bias_ into zeros). The norm, c and the DoRA terms are f32.
#include <cmath>

#include "lowrank/ops/ops.h"
#include "variants.h"

namespace lowrank::lora {
namespace {

// 1 / ||W0 + s·B·A|| of every row [out] (f32), from the f32 A and B; `merged` receives W0 + s·B·A.
Tensor inverse_row_norms(const Tensor& w0, const Tensor& A, const Tensor& B, float s, Tensor* merged = nullptr) {
  Tensor w = w0.dtype() == DType::F32 ? w0.clone() : ops::cast(w0, DType::F32);
  ops::matmul_nn(B, A, w, s, 1.0f);
  const int64_t in = w.dim(1);
  Tensor ones = Tensor::empty({in}, DType::F32, w.device());
  ops::fill_(ones, 1.0f);
  Tensor rstd;  // 1 / sqrt(mean of squares) = sqrt(in) / n
  ops::rmsnorm(w, ones, 0.0f, &rstd);
  ops::scale_(rstd, static_cast<float>(1.0 / std::sqrt(static_cast<double>(in))));
  if (merged) *merged = w;
  return rstd;
}

// [rows, v.numel()] f32 with every row equal to v.
Tensor broadcast_rows(const Tensor& v, int64_t rows) {
  Tensor out = Tensor::zeros({rows, v.numel()}, DType::F32, v.device());
  ops::add_bias_(out, v);
  return out;
}

// c = m / ||W0 + s·B·A|| [out] and 1/n, from the pair's f32 masters (PEFT: the norm of the current weights).
std::pair<Tensor, Tensor> magnitude_scale(const LoraPair& p, const Tensor& w0, float s) {
  Tensor inv_n = inverse_row_norms(w0, p.A, p.B, s);
  Tensor c = p.magnitude.clone();
  ops::mul_(c, inv_n);
  return {c, inv_n};
}

class Dora : public LoraVariant {
 public:
  std::vector<LayerTensor> tensors(LoraPair& p) const override {
    auto t = lora_ab_tensors(p, "lora_A.weight", "lora_B.weight", "lora_A", "lora_B");
    t.push_back({"lora_magnitude_vector", "lora_magnitude_vector", &p.magnitude, &p.grad_magnitude, nullptr, {p.out}});
    return t;
  }

  void init_extra(LoraPair& p, const Tensor& base_weight) const override {
    // PEFT: the magnitude starts as the norm of the adapted weight (= ||W0|| with B = 0); once per
    // layer at create, on the host.
    const Tensor inv_n = inverse_row_norms(base_weight, p.A, p.B, static_cast<float>(p.scale)).to(Device::cpu());
    p.magnitude = Tensor::empty({p.out});
    for (int64_t o = 0; o < p.out; ++o) p.magnitude.f32()[o] = 1.0f / inv_n.f32()[o];
  }

  void forward(const LoraInput& in, Tensor& y, LoraSaved* saved) const override {
    const Tensor w0 = in.base.compute_weight();  // dequantized when the base is NF4 (as PEFT + bnb)
    auto [c, inv_n] = magnitude_scale(in.pair, w0, in.scale);
    const int64_t rows = y.dim(0);
    Tensor base, h, lora;
    ops::matmul_nt(in.x_in, w0, base);              // x' W0ᵀ  [N, out]
    ops::matmul_nt(in.x_in, in.A, h);               // h = x' Aᵀ [N, r]
    ops::matmul_nt(h, in.B, lora);                  // h Bᵀ     [N, out]
    Tensor t = ops::cast(base, DType::F32);         // x' W0ᵀ + s · h Bᵀ, f32
    if (t.raw() == base.raw()) t = base.clone();
    ops::add_scaled_(t, lora, in.scale);
    Tensor delta = t.clone();                       // c ⊙ t - x' W0ᵀ = (c - 1) ⊙ x' W0ᵀ + c ⊙ s · h Bᵀ
    ops::mul_(delta, broadcast_rows(c, rows));
    ops::add_scaled_(delta, base, -1.0f);
    ops::add_(y, delta);
    if (!saved) return;
    saved->h = h;
    saved->dora_scale = c;
    ops::mul_(t, broadcast_rows(inv_n, rows));      // t / n: d(loss)/dm = Σ_rows dy ⊙ this
    saved->dora_out = t;
  }

  void backward(LoraPair& p, const LoraInput& in, const LoraSaved& sv, const Tensor& dy, Tensor* dx_in,
                bool accumulate) const override {
    const int64_t rows = dy.dim(0);
    Tensor gm = ops::cast(dy, DType::F32);
    if (gm.raw() == dy.raw()) gm = dy.clone();
    ops::mul_(gm, sv.dora_out);
    ops::bias_grad_(p.grad_magnitude, gm);                   // dm += Σ_rows dy ⊙ t / n
    Tensor gc = ops::cast(dy, DType::F32);                   // g' = dy ⊙ c
    if (gc.raw() == dy.raw()) gc = dy.clone();
    ops::mul_(gc, broadcast_rows(sv.dora_scale, rows));
    ops::matmul_tn(gc, sv.h, p.grad_B, in.scale, 1.0f);     // dB += s · g'ᵀ h
    Tensor gb;
    ops::matmul_nn(gc, in.B, gb);                            // g' B  [N, r]
    ops::matmul_tn(gb, in.x_in, p.grad_A, in.scale, 1.0f);  // dA += s · (g' B)ᵀ x'
    if (!dx_in) return;
    ops::add_scaled_(gc, dy, -1.0f);                         // (c - 1) ⊙ dy
    ops::matmul_nn(gc, in.base.compute_weight(), *dx_in, 1.0f, accumulate ? 1.0f : 0.0f);
    ops::matmul_nn(gb, in.A, *dx_in, in.scale, 1.0f);       // + s · (g' B) A
  }

  void merge(const LoraPair& p, Tensor& weight, double user_scale) const override {
    Tensor merged;  // W0 + s·B·A [out, in], scaled row by row: through its transpose, column by column
    Tensor inv_n = inverse_row_norms(weight, p.A, p.B, static_cast<float>(p.scale * user_scale), &merged);
    Tensor c = p.magnitude.clone();
    ops::mul_(c, inv_n);
    Tensor t = ops::transpose2d(merged);
    ops::mul_(t, broadcast_rows(c, t.dim(0)));
    ops::cast_into_(weight, ops::transpose2d(t));  // in place: a tied lm_head shares the tensor
  }
};

}  // namespace

const LoraVariant& dora() {
  static const Dora v;
  return v;
}

}  // namespace lowrank::lora
