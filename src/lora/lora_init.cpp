#include "lowrank/lora/lora_init.h"

#include <cmath>

#include "linalg.h"
#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::lora {
namespace {

std::vector<double> to_double(const Tensor& t) { return std::vector<double>(t.f32(), t.f32() + t.numel()); }

Tensor from_double(const std::vector<double>& v, Shape shape) {
  Tensor t = Tensor::empty(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(v[i]);
  return t;
}

// c [m, n] = a [m, k] · b [k, n]
std::vector<double> matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k,
                           int64_t n) {
  std::vector<double> c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t l = 0; l < k; ++l) {
      const double x = a[i * k + l];
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += x * b[l * n + j];
    }
  return c;
}

std::vector<double> transpose(const std::vector<double>& a, int64_t m, int64_t n) {
  std::vector<double> t(a.size());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) t[j * m + i] = a[i * n + j];
  return t;
}

// The top-q singular triplets of w [m, n] by torch.svd_lowrank's algorithm (Halko et al.):
// Q spans w·G (G Gaussian [n, q]), refined by `niter` power iterations with re-orthogonalisation,
// then the SVD of the small Qᵀ w.
ThinSvd randomized_svd(const std::vector<double>& w, int64_t m, int64_t n, int64_t q, int64_t niter, Rng& rng) {
  std::vector<double> g(static_cast<size_t>(n * q));
  for (double& v : g) v = rng.normal();
  const std::vector<double> wt = transpose(w, m, n);
  std::vector<double> Q = thin_qr(matmul(w, g, m, n, q), m, q).Q;  // [m, q]
  for (int64_t it = 0; it < niter; ++it) {
    std::vector<double> Z = thin_qr(matmul(wt, Q, n, m, q), n, q).Q;  // [n, q]
    Q = thin_qr(matmul(w, Z, m, n, q), m, q).Q;
  }
  const std::vector<double> small = matmul(transpose(Q, m, q), w, q, m, n);  // [q, n]
  ThinSvd s = thin_svd(small, q, n);
  s.U = matmul(Q, s.U, m, q, s.k);  // [m, k]
  return s;
}

void init_pissa(LoraPair& p, const std::vector<double>& w, const LoraConfig& c, Rng& rng) {
  const int64_t m = p.out, n = p.in, r = p.r;
  const ThinSvd s = c.pissa_niter > 0 ? randomized_svd(w, m, n, r, c.pissa_niter, rng) : thin_svd(w, m, n);
  if (s.k < r)
    throw error(p.module, ": PiSSA needs r <= min(out, in) = ", s.k, ", got r = ", r);
  std::vector<double> A(static_cast<size_t>(r * n)), B(static_cast<size_t>(m * r));
  for (int64_t i = 0; i < r; ++i) {
    const double root = std::sqrt(s.S[i] / p.scale);  // PEFT: S_r / scaling, split evenly over A and B
    for (int64_t j = 0; j < n; ++j) A[i * n + j] = root * s.Vt[i * n + j];
    for (int64_t o = 0; o < m; ++o) B[o * r + i] = s.U[o * s.k + i] * root;
  }
  p.A = from_double(A, {r, n});
  p.B = from_double(B, {m, r});
}

void init_olora(LoraPair& p, const std::vector<double>& w) {
  const int64_t m = p.out, n = p.in, r = p.r;
  const ThinQr qr = thin_qr(w, m, n);
  if (qr.k < r) throw error(p.module, ": OLoRA needs r <= min(out, in) = ", qr.k, ", got r = ", r);
  std::vector<double> A(static_cast<size_t>(r * n)), B(static_cast<size_t>(m * r));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < n; ++j) A[i * n + j] = qr.R[i * n + j];
  for (int64_t o = 0; o < m; ++o)
    for (int64_t i = 0; i < r; ++i) B[o * r + i] = qr.Q[o * qr.k + i];
  p.A = from_double(A, {r, n});
  p.B = from_double(B, {m, r});
}

}  // namespace

Tensor init_lora_pair(LoraPair& p, const LoraConfig& c, const Tensor& weight, Rng& rng) {
  p.A = Tensor::empty({p.r, p.in});
  p.B = Tensor::zeros({p.out, p.r});
  if (p.kind == VariantKind::Embedding) {  // PEFT: A = 0, B ~ N(0, 1) (loralib's nn.Embedding init)
    p.A = Tensor::zeros({p.r, p.in});
    for (int64_t i = 0; i < p.B.numel(); ++i) p.B.f32()[i] = rng.normal();
    return {};
  }
  float* A = p.A.f32();
  switch (c.init) {
    case InitMode::Gaussian: {
      const float stddev = static_cast<float>(1.0 / p.r);  // PEFT: nn.init.normal_(A, std=1/r)
      for (int64_t i = 0; i < p.A.numel(); ++i) A[i] = rng.normal() * stddev;
      return {};
    }
    case InitMode::Kaiming: {  // kaiming_uniform(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))
      const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.in)));
      for (int64_t i = 0; i < p.A.numel(); ++i) A[i] = rng.uniform(-bound, bound);
      return {};
    }
    case InitMode::Pissa:
    case InitMode::Olora: break;
  }
  const std::vector<double> w = to_double(weight);
  if (c.init == InitMode::Pissa) init_pissa(p, w, c, rng);
  else init_olora(p, w);
  p.A_init = p.A.clone();
  p.B_init = p.B.clone();
  Tensor residual = weight.clone();
  ops::matmul_nn(p.B, p.A, residual, static_cast<float>(-p.scale), 1.0f);  // W0 - s·B·A
  return residual;
}

std::pair<Tensor, Tensor> converted_pair(const LoraPair& p) {
  const Tensor A = p.A.to(Device::cpu()), B = p.B.to(Device::cpu());
  if (!p.A_init.defined()) return {A, B};
  Tensor A2 = Tensor::empty({2 * p.r, p.in}), B2 = Tensor::empty({p.out, 2 * p.r});
  const int64_t n = p.in, r = p.r;
  std::copy(A.f32(), A.f32() + r * n, A2.f32());                 // [A; A0]
  std::copy(p.A_init.f32(), p.A_init.f32() + r * n, A2.f32() + r * n);
  for (int64_t o = 0; o < p.out; ++o)                           // [B, -B0]
    for (int64_t i = 0; i < r; ++i) {
      B2.f32()[o * 2 * r + i] = B.f32()[o * r + i];
      B2.f32()[o * 2 * r + r + i] = -p.B_init.f32()[o * r + i];
    }
  return {A2, B2};
}

LoraConfig converted_config(const LoraConfig& c) {
  LoraConfig out = c;
  const double alpha_factor = c.use_rslora ? std::sqrt(2.0) : 2.0;  // keeps alpha/r (alpha/sqrt(r))
  out.r = 2 * c.r;
  out.alpha = c.alpha * alpha_factor;
  for (auto& [k, v] : out.rank_pattern) v *= 2;
  for (auto& [k, v] : out.alpha_pattern) v *= alpha_factor;
  out.init = InitMode::Kaiming;  // saved as init_lora_weights=true: loading must not run the SVD again
  out.pissa_niter = 0;
  return out;
}

}  // namespace lowrank::lora
