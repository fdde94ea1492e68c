// GEMMs through cuBLASLt with f32 accumulation (CUBLAS_COMPUTE_32F; no TF32 for f32 inputs).
// Row-major tensors are column-major transposes, so each row-major product Y = op(X)·op(W) is run
// as the column-major product Yᵀ = op(W)ᵀ·op(X)ᵀ: W becomes cuBLAS's A and X its B.
// Dtypes: f32 x f32 -> f32 output runs in f32; anything else runs with bf16 inputs, a f32 operand
// being rounded to a bf16 copy first (LoRA's f32 A/B against bf16 activations: a copy of r·in
// elements, cheap next to the GEMM). The output (y) may be f32 or bf16 either way; beta = 1 adds
// into it (LoRA's expand accumulated into the base output).
// Algorithms: the first time a problem is seen, the heuristic's best few candidates are timed on
// the real operands (into a scratch output) and the fastest is kept for the process: for LoRA's
// skinny shapes (r = 16 rows or a K = tokens reduction) the heuristic's first choice is often far
// from the best. LOWRANK_GEMM_AUTOTUNE=0 keeps the heuristic's first choice (run-to-run bitwise
// reproducible, as autotuning picks by timing), as does a problem first met inside a ShapesVary
// scope (lowrank/core/shapes_vary.h: a server's prefills).
#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "common.cuh"
#include "context.h"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/log.h"
#include "lowrank/core/shapes_vary.h"

namespace lowrank::cuda {
namespace {

enum class Layout { NT, NN, TN };

cudaDataType cuda_type(DType t) { return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

// A 16-byte aligned copy of a view that starts mid-row (slice_rows of an odd-sized matrix):
// cuBLASLt's fast kernels need aligned operands, and the copy is cheap next to the GEMM.
Tensor aligned(const Tensor& t) {
  if (aligned16(t.raw())) return t;
  Tensor c = Tensor::empty(t.shape(), t.dtype(), t.device());
  device_copy(c.raw(), c.device(), t.raw(), t.device(), t.nbytes());
  return c;
}

void lt_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw InternalError(detail::concat("cuBLASLt ", what, " failed with status ", int(s)));
}

struct PlanKey {
  int device;
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  cudaDataType in, out;
  uint32_t align_a, align_b, align_c;  // align_c: the lesser of C's and D's
  auto tie() const { return std::tie(device, ta, tb, m, n, k, lda, ldb, ldc, in, out, align_a, align_b, align_c); }
  bool operator<(const PlanKey& o) const { return tie() < o.tie(); }
};

// Descriptors and the chosen algorithm for one problem, kept for the process: a training step
// repeats the same few dozen shapes, and choosing costs more than a small GEMM.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// The operands of the first call of a problem, for timing the candidate algorithms.
struct Operands {
  const void* A;
  const void* B;
  float alpha, beta;
};

bool autotune_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LOWRANK_GEMM_AUTOTUNE");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

// Mean time of `reps` runs of one candidate into `scratch` (ms); +inf when it fails to run.
float time_algo(DeviceContext& ctx, const Plan& p, const cublasLtMatmulAlgo_t& algo, const Operands& o,
                void* scratch, cudaEvent_t start, cudaEvent_t stop) {
  constexpr int reps = 3;
  auto run = [&] {
    return cublasLtMatmul(ctx.lt, p.op, &o.alpha, o.A, p.a, o.B, p.b, &o.beta, scratch, p.c, scratch, p.c, &algo,
                          ctx.workspace, ctx.workspace_bytes, ctx.stream);
  };
  if (run() != CUBLAS_STATUS_SUCCESS) return 1e30f;  // warm-up (and a check that it runs)
  LR_CUDA(cudaEventRecord(start, ctx.stream));
  for (int i = 0; i < reps; ++i) run();
  LR_CUDA(cudaEventRecord(stop, ctx.stream));
  LR_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  LR_CUDA(cudaEventElapsedTime(&ms, start, stop));
  return ms / reps;
}

// Index of the fastest of `results` on the operands, timed into a scratch output of the problem's size.
int fastest(DeviceContext& ctx, const PlanKey& k, const Plan& p, const cublasLtMatmulHeuristicResult_t* results,
            int found, const Operands& o) {
  const size_t elem = k.out == CUDA_R_32F ? 4 : 2;
  void* scratch = nullptr;
  LR_CUDA(cudaMallocAsync(&scratch, static_cast<size_t>(k.ldc) * k.n * elem, ctx.stream));
  LR_CUDA(cudaMemsetAsync(scratch, 0, static_cast<size_t>(k.ldc) * k.n * elem, ctx.stream));
  cudaEvent_t start, stop;
  LR_CUDA(cudaEventCreate(&start));
  LR_CUDA(cudaEventCreate(&stop));
  int best = 0;
  float best_ms = 1e30f, first_ms = 0;
  for (int i = 0; i < found; ++i) {
    const float ms = time_algo(ctx, p, results[i].algo, o, scratch, start, stop);
    if (i == 0) first_ms = ms;
    if (ms < best_ms) best_ms = ms, best = i;
  }
  log_debug("gemm: ", k.m, "x", k.n, "x", k.k, k.ta ? " T" : " N", k.tb ? "T" : "N", ": candidate ", best, " of ",
            found, ", ", best_ms * 1e3f, " us (the heuristic's first: ", first_ms * 1e3f, " us)");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  LR_CUDA(cudaFreeAsync(scratch, ctx.stream));
  return best;
}

Plan make_plan(const PlanKey& k, DeviceContext& ctx, const Operands& operands) {
  Plan p;
  lt_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t ta = k.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = k.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
  lt_check(cublasLtMatrixLayoutCreate(&p.a, k.in, k.ta ? k.k : k.m, k.ta ? k.m : k.k, k.lda), "layout A");
  lt_check(cublasLtMatrixLayoutCreate(&p.b, k.in, k.tb ? k.n : k.k, k.tb ? k.k : k.n, k.ldb), "layout B");
  lt_check(cublasLtMatrixLayoutCreate(&p.c, k.out, k.m, k.n, k.ldc), "layout C");
  cublasLtMatmulPreference_t pref;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  const uint64_t ws = ctx.workspace_bytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k.align_a, 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k.align_b, 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k.align_c, 4);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k.align_c, 4);
  // 8: asked for 64, cuBLASLt 13's heuristic returns at most 8 for these problems (2026-12-04).
  constexpr int kCandidates = 8;
  cublasLtMatmulHeuristicResult_t results[kCandidates]{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.op, p.a, p.b, p.c, p.c, pref,
                                                           autotune_enabled() && !shapes_vary() ? kCandidates : 1,
                                                           results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    throw InternalError(detail::concat("cuBLASLt has no algorithm for a ", k.m, "x", k.n, "x", k.k,
                                       " GEMM (status ", int(st), ")"));
  p.algo = results[found > 1 ? fastest(ctx, k, p, results, found, operands) : 0].algo;
  return p;
}

const Plan& plan_for(const PlanKey& key, DeviceContext& ctx, const Operands& operands) {
  static std::mutex mutex;
  static auto* plans = new std::map<PlanKey, Plan>();  // leaked: lives as long as the handles
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(key, ctx, operands)).first;
  return it->second;
}

// Column-major D[m,n] = alpha op(A) op(B) + beta C, C (same layout as D) being D itself unless given.
void lt_matmul(Device dev, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, int64_t lda,
               const void* B, int64_t ldb, DType in, void* D, int64_t ldc, DType out, float alpha, float beta,
               const void* C = nullptr) {
  DeviceContext& ctx = context(dev);
  if (!C) C = D;
  const PlanKey key{dev.index, ta, tb, m, n, k, lda, ldb, ldc, cuda_type(in), cuda_type(out),
                    alignment(A), alignment(B), std::min(alignment(C), alignment(D))};
  const Plan& p = plan_for(key, ctx, Operands{A, B, alpha, beta});
  lt_check(cublasLtMatmul(ctx.lt, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.c, D, p.c, &p.algo, ctx.workspace,
                          ctx.workspace_bytes, ctx.stream),
           "Matmul");
}

// The row-major product of matmul_* on raw operands with row strides: rows of x, w, y are lx, lw,
// ly elements apart (column-major D = op(W)·op(X) in cuBLASLt's terms). c, when given, is read in
// y's place for the beta term (laid out as y).
void row_major_matmul(Layout layout, Device dev, int64_t M, int64_t N, int64_t K, const void* x, int64_t lx,
                      const void* w, int64_t lw, DType in, void* y, int64_t ly, DType out, float alpha, float beta,
                      const void* c = nullptr) {
  const bool tw = layout == Layout::NT, tx = layout == Layout::TN;
  lt_matmul(dev, tw, tx, N, M, K, w, lw, x, lx, in, y, ly, out, alpha, beta, c);
}

void matmul(Layout layout, const char* op, const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  check_arg(x, op, "x");
  check_arg(w, op, "w");
  LR_CHECK(x.rank() == 2 && w.rank() == 2, op, " ", x.str(), " ", w.str());
  int64_t M, K, N;
  switch (layout) {
    case Layout::NT: M = x.dim(0), K = x.dim(1), N = w.dim(0); LR_CHECK(w.dim(1) == K, x.str(), " · ", w.str(), "ᵀ"); break;
    case Layout::NN: M = x.dim(0), K = x.dim(1), N = w.dim(1); LR_CHECK(w.dim(0) == K, x.str(), " · ", w.str()); break;
    default: K = x.dim(0), M = x.dim(1), N = w.dim(1); LR_CHECK(w.dim(0) == K, x.str(), "ᵀ · ", w.str()); break;
  }
  const bool reuse = y.defined() && y.rank() == 2 && y.dim(0) == M && y.dim(1) == N && y.device() == x.device();
  if (beta != 0.0f) {
    LR_CHECK(reuse, op, ": beta != 0 needs an output [", M, ", ", N, "] on ", x.device().str(), ", got ",
             y.defined() ? y.str() : "undefined");
  } else if (!reuse) {
    const DType out = x.dtype() == DType::F32 && w.dtype() == DType::F32 ? DType::F32 : DType::BF16;
    y = Tensor::empty({M, N}, out, x.device());
  }
  check_arg(y, op, "y");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f) y.zero_();
    else scale_(y, beta);
    return;
  }
  const bool f32 = x.dtype() == DType::F32 && w.dtype() == DType::F32 && y.dtype() == DType::F32;
  const DType in = f32 ? DType::F32 : DType::BF16;
  const Tensor xc = aligned(cast(x, in)), wc = aligned(cast(w, in));  // no copies in the usual case
  Tensor yc = aligned16(y.raw()) ? y : beta != 0.0f ? aligned(y) : Tensor::empty(y.shape(), y.dtype(), y.device());
  const int64_t lx = layout == Layout::TN ? M : K, lw = layout == Layout::NT ? K : N;
  row_major_matmul(layout, x.device(), M, N, K, xc.raw(), lx, wc.raw(), lw, in, yc.raw(), N, y.dtype(), alpha, beta);
  if (yc.raw() != y.raw()) device_copy(y.raw(), y.device(), yc.raw(), yc.device(), y.nbytes());
}

}  // namespace

void matmul_nt(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  matmul(Layout::NT, "matmul_nt", x, w, y, alpha, beta);
}
void matmul_nn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  matmul(Layout::NN, "matmul_nn", x, w, y, alpha, beta);
}
void matmul_tn(const Tensor& x, const Tensor& w, Tensor& y, float alpha, float beta) {
  matmul(Layout::TN, "matmul_tn", x, w, y, alpha, beta);
}

void matmul_blocks(ops::Gemm layout, const ops::ColumnBlock& x, const ops::ColumnBlock& w,
                   const ops::ColumnBlock& y, float alpha, float beta) {
  for (const ops::ColumnBlock* b : {&x, &w, &y}) check_arg(b->t, "matmul_blocks", "operand");
  const ops::GemmDims d = ops::gemm_dims(layout, x, w, y);
  LR_CHECK(x.t.dtype() == w.t.dtype() && x.t.dtype() != DType::F16, "matmul_blocks: x ", x.t.str(), ", w ", w.t.str());
  LR_CHECK(y.t.dtype() == DType::F32 || y.t.dtype() == x.t.dtype(), "matmul_blocks: output ", y.t.str());
  if (d.m == 0 || d.n == 0) return;
  LR_CHECK(d.k > 0, "matmul_blocks: empty inner dimension");
  auto at = [](const ops::ColumnBlock& b) {
    return static_cast<char*>(b.t.raw()) + b.col * static_cast<int64_t>(dtype_size(b.t.dtype()));
  };
  const Layout l = layout == ops::Gemm::NT ? Layout::NT : layout == ops::Gemm::NN ? Layout::NN : Layout::TN;
  row_major_matmul(l, x.t.device(), d.m, d.n, d.k, at(x), x.t.dim(1), at(w), w.t.dim(1), x.t.dtype(), at(y),
                   y.t.dim(1), y.t.dtype(), alpha, beta);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor y;
  matmul_nt(x, w, y);
  if (b.defined()) add_bias_(y, b);
  return y;
}

Tensor matmul_nt_add(const Tensor& x, const Tensor& w, const Tensor& c, float alpha) {
  for (const Tensor* t : {&x, &w, &c}) check_arg(*t, "matmul_nt_add", "operand");
  LR_CHECK(x.rank() == 2 && w.rank() == 2 && w.dim(1) == x.dim(1) && c.rank() == 2 && c.dim(0) == x.dim(0) &&
               c.dim(1) == w.dim(0),
           "matmul_nt_add: ", x.str(), " · ", w.str(), "ᵀ + ", c.str());
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(0);
  const bool f32 = x.dtype() == DType::F32 && w.dtype() == DType::F32 && c.dtype() == DType::F32;
  Tensor y = Tensor::empty({M, N}, c.dtype(), c.device());
  if (M == 0 || N == 0) return y;
  if (K == 0) return c.clone();
  const DType in = f32 ? DType::F32 : DType::BF16;
  const Tensor xc = aligned(cast(x, in)), wc = aligned(cast(w, in)), cc = aligned(c);
  row_major_matmul(Layout::NT, x.device(), M, N, K, xc.raw(), K, wc.raw(), K, in, y.raw(), N, y.dtype(), alpha, 1.0f,
                   cc.raw());
  return y;
}

}  // namespace lowrank::cuda
