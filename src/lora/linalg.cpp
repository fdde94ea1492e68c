#include "linalg.h"

#include <algorithm>

#include "lowrank/core/error.h"

// LAPACK (Fortran ABI, column-major; the trailing size_t is the hidden length of a CHARACTER argument).
extern "C" {
void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s, double* u,
             const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork, int* iwork, int* info,
             size_t jobz_len);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work, const int* lwork,
             int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau, double* work,
             const int* lwork, int* info);
}

namespace lowrank::lora {
namespace {

int to_int(int64_t v) {
  LR_CHECK(v > 0 && v < (int64_t{1} << 31), "matrix dimension ", v, " out of LAPACK's range");
  return static_cast<int>(v);
}

}  // namespace

ThinSvd thin_svd(const std::vector<double>& a, int64_t m, int64_t n) {
  LR_CHECK(static_cast<int64_t>(a.size()) == m * n, "thin_svd: ", a.size(), " values for ", m, "x", n);
  // Row-major a [m, n] is column-major aᵀ [n, m] = V S Uᵀ: LAPACK's u of aᵀ, read row-major, is Vt,
  // and its vt is U.
  const int rows = to_int(n), cols = to_int(m), k = std::min(rows, cols);
  std::vector<double> work_a = a;
  ThinSvd r;
  r.k = k;
  r.S.resize(k);
  r.Vt.resize(static_cast<size_t>(k) * n);
  r.U.resize(static_cast<size_t>(m) * k);
  std::vector<int> iwork(8 * static_cast<size_t>(k));
  int info = 0, lwork = -1;
  double query = 0;
  dgesdd_("S", &rows, &cols, work_a.data(), &rows, r.S.data(), r.Vt.data(), &rows, r.U.data(), &k, &query, &lwork,
          iwork.data(), &info, 1);
  LR_CHECK(info == 0, "dgesdd workspace query failed: info ", info);
  lwork = static_cast<int>(query);
  std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
  dgesdd_("S", &rows, &cols, work_a.data(), &rows, r.S.data(), r.Vt.data(), &rows, r.U.data(), &k, work.data(),
          &lwork, iwork.data(), &info, 1);
  if (info != 0) throw error("SVD did not converge (LAPACK dgesdd info ", info, ") for a ", m, "x", n, " weight");
  return r;
}

ThinQr thin_qr(const std::vector<double>& a, int64_t m, int64_t n) {
  LR_CHECK(static_cast<int64_t>(a.size()) == m * n, "thin_qr: ", a.size(), " values for ", m, "x", n);
  const int rows = to_int(m), cols = to_int(n), k = std::min(rows, cols);
  std::vector<double> col(a.size());  // column-major copy
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) col[i + j * m] = a[i * n + j];
  std::vector<double> tau(k);
  int info = 0, lwork = -1;
  double query = 0;
  dgeqrf_(&rows, &cols, col.data(), &rows, tau.data(), &query, &lwork, &info);
  lwork = std::max(static_cast<int>(query), 1);
  std::vector<double> work(static_cast<size_t>(lwork));
  dgeqrf_(&rows, &cols, col.data(), &rows, tau.data(), work.data(), &lwork, &info);
  LR_CHECK(info == 0, "dgeqrf failed: info ", info);
  ThinQr r;
  r.k = k;
  r.R.assign(static_cast<size_t>(k) * n, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = i; j < n; ++j) r.R[i * n + j] = col[i + j * m];
  lwork = -1;
  dorgqr_(&rows, &k, &k, col.data(), &rows, tau.data(), &query, &lwork, &info);
  lwork = std::max(static_cast<int>(query), 1);
  work.resize(static_cast<size_t>(lwork));
  dorgqr_(&rows, &k, &k, col.data(), &rows, tau.data(), work.data(), &lwork, &info);
  LR_CHECK(info == 0, "dorgqr failed: info ", info);
  r.Q.resize(static_cast<size_t>(m) * k);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) r.Q[i * k + j] = col[i + j * m];
  return r;
}

}  // namespace lowrank::lora
