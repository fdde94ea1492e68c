// DoRA (weight-decomposed LoRA, arXiv 2402.09353) exactly as PEFT 0.21 computes it (use_dora):
//   n = ||W0 + s·B·A|| per output row, detached (no gradient flows through it: the paper's §4.3)
//   c = m / n                        m: lora_magnitude_vector [out], trained
//   y += (c - 1) ⊙ (x' W0ᵀ) + c ⊙ s · (x' Aᵀ) Bᵀ      x' = drop(x); the bias stays outside
// so that without dropout y = b + c ⊙ x (W0 + s·B·A)ᵀ. Backward, with g' = dy ⊙ c:
//   dm = Σ_rows dy ⊙ (x' W0ᵀ + s · h Bᵀ) / n;  dB += s · g'ᵀ h;  dA += s · (g' B)ᵀ x'
//   d x' = ((c - 1) ⊙ dy) W0 + s · (g' B) A        (the base GEMM adds dy W0 itself)
// Merge as PEFT: W = (m / ||W0 + s·B·A||) ⊙ (W0 + s·B·A) row by row.
// The row norms and scalings are CPU loops: DoRA runs on the CPU (runs_on refuses CUDA).
#include <cmath>

#include "lowrank/ops/ops.h"
#include "variants.h"

namespace lowrank::lora {
namespace {

// ||W0 + s·B·A|| of every row [out], with W0 [out, in] f32 on the CPU.
std::vector<double> row_norms(const Tensor& w0, const Tensor& A, const Tensor& B, float s, Tensor* merged = nullptr) {
  Tensor w = w0.clone();
  ops::matmul_nn(B, A, w, s, 1.0f);
  const int64_t out = w.dim(0), in = w.dim(1);
  std::vector<double> n(out);
  const float* pw = w.f32();
  for (int64_t o = 0; o < out; ++o) {
    double sum = 0;
    for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(pw[o * in + i]) * pw[o * in + i];
    n[o] = std::sqrt(sum);
  }
  if (merged) *merged = w;
  return n;
}

// x [N, out] with every column o multiplied by v[o].
void scale_columns_(Tensor& x, const float* v) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  float* px = x.f32();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < cols; ++o) px[r * cols + o] *= v[o];
}

class Dora : public LoraVariant {
 public:
  std::vector<LayerTensor> tensors(LoraPair& p) const override {
    auto t = lora_ab_tensors(p, "lora_A.weight", "lora_B.weight", "lora_A", "lora_B");
    t.push_back({"lora_magnitude_vector", "lora_magnitude_vector", &p.magnitude, &p.grad_magnitude, nullptr, {p.out}});
    return t;
  }

  void init_extra(LoraPair& p, const Tensor& base_weight) const override {
    // PEFT: the magnitude starts as the norm of the adapted weight (= ||W0|| with B = 0).
    const auto n = row_norms(base_weight.to(DType::F32), p.A, p.B, static_cast<float>(p.scale));
    p.magnitude = Tensor::empty({p.out});
    for (int64_t o = 0; o < p.out; ++o) p.magnitude.f32()[o] = static_cast<float>(n[o]);
  }

  bool runs_on(Device device) const override { return device.is_cpu(); }

  void forward(const LoraInput& in, Tensor& y, LoraSaved* saved) const override {
    LR_CHECK(y.device().is_cpu() && y.dtype() == DType::F32, "DoRA runs on the CPU in f32");
    const Tensor& m = in.pair.magnitude;
    const auto n = row_norms(in.base.weight, in.A, in.B, in.scale);
    const int64_t out = y.dim(1), rows = y.dim(0);
    Tensor c = Tensor::empty({out});
    for (int64_t o = 0; o < out; ++o) c.f32()[o] = static_cast<float>(m.f32()[o] / n[o]);
    Tensor base, h, lora;
    ops::matmul_nt(in.x_in, in.base.weight, base);  // x' W0ᵀ  [N, out]
    ops::matmul_nt(in.x_in, in.A, h);               // h = x' Aᵀ [N, r]
    ops::matmul_nt(h, in.B, lora);                  // h Bᵀ     [N, out]
    float* py = y.f32();
    const float* pb = base.f32();
    const float* pl = lora.f32();
    const float* pc = c.f32();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        const int64_t k = r * out + o;
        py[k] += (pc[o] - 1.0f) * pb[k] + pc[o] * in.scale * pl[k];
      }
    if (!saved) return;
    saved->h = h;
    saved->dora_scale = c;
    // (x' W0ᵀ + s · h Bᵀ) / n, in place over `base`.
    float* po = base.f32();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        const int64_t k = r * out + o;
        po[k] = static_cast<float>((po[k] + in.scale * pl[k]) / n[o]);
      }
    saved->dora_out = base;
  }

  void backward(LoraPair& p, const LoraInput& in, const LoraSaved& sv, const Tensor& dy, Tensor* dx_in,
                bool accumulate) const override {
    const int64_t rows = dy.dim(0), out = dy.dim(1);
    const float* pdy = dy.f32();
    const float* po = sv.dora_out.f32();
    float* gm = p.grad_magnitude.f32();
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += static_cast<double>(pdy[r * out + o]) * po[r * out + o];
      gm[o] += static_cast<float>(sum);
    }
    Tensor gc = dy.clone();  // g' = dy ⊙ c
    scale_columns_(gc, sv.dora_scale.f32());
    ops::matmul_tn(gc, sv.h, p.grad_B, in.scale, 1.0f);     // dB += s · g'ᵀ h
    Tensor gb;
    ops::matmul_nn(gc, in.B, gb);                            // g' B  [N, r]
    ops::matmul_tn(gb, in.x_in, p.grad_A, in.scale, 1.0f);  // dA += s · (g' B)ᵀ x'
    if (!dx_in) return;
    Tensor c_minus_1 = sv.dora_scale.clone();
    for (int64_t o = 0; o < out; ++o) c_minus_1.f32()[o] -= 1.0f;
    Tensor dyc = dy.clone();
    scale_columns_(dyc, c_minus_1.f32());
    ops::matmul_nn(dyc, in.base.weight, *dx_in, 1.0f, accumulate ? 1.0f : 0.0f);  // ((c-1) ⊙ dy) W0
    ops::matmul_nn(gb, in.A, *dx_in, in.scale, 1.0f);                           // + s · (g' B) A
  }

  void merge(const LoraPair& p, Tensor& weight, double user_scale) const override {
    LR_CHECK(weight.device().is_cpu() && weight.dtype() == DType::F32, "DoRA merge on the CPU in f32");
    Tensor merged;
    const auto n = row_norms(weight, p.A, p.B, static_cast<float>(p.scale * user_scale), &merged);
    const int64_t out = weight.dim(0), in = weight.dim(1);
    float* pw = weight.f32();
    const float* pm = merged.f32();
    for (int64_t o = 0; o < out; ++o) {
      const double c = p.magnitude.f32()[o] / n[o];
      for (int64_t i = 0; i < in; ++i) pw[o * in + i] = static_cast<float>(c * pm[o * in + i]);
    }
  }
};

}  // namespace

const LoraVariant& dora() {
  static const Dora v;
  return v;
}

}  // namespace lowrank::lora
