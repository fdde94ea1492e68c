#pragma once
// Dense SVD and QR in double on the CPU, for PiSSA and OLoRA inits (lora_init.cpp): LAPACK's
// dgesdd / dgeqrf + dorgqr, which OpenBLAS (already linked for the CPU GEMMs) ships. Matrices are
// row-major std::vector<double>.
#include <cstdint>
#include <vector>

namespace lowrank::lora {

struct ThinSvd {
  int64_t k = 0;            // min(m, n)
  std::vector<double> U;    // [m, k]
  std::vector<double> S;    // [k], descending
  std::vector<double> Vt;   // [k, n]
};
// a [m, n] = U diag(S) Vt.
ThinSvd thin_svd(const std::vector<double>& a, int64_t m, int64_t n);

struct ThinQr {
  int64_t k = 0;            // min(m, n)
  std::vector<double> Q;    // [m, k], orthonormal columns
  std::vector<double> R;    // [k, n], upper triangular
};
// a [m, n] = Q R (Householder, as torch.linalg.qr's reduced mode).
ThinQr thin_qr(const std::vector<double>& a, int64_t m, int64_t n);

}  // namespace lowrank::lora
