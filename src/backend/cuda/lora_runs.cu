// LoRA over runs of rows (lora_runs_: a prefill's sequences, sorted by adapter) as two grouped
// GEMM launches of cuBLAS: every run's shrink h_s = x_s · A_jᵀ in one, every run's expand
// y_s += scale_j · h_s · B_jᵀ in the other. A GEMM pair per run costs two launches (and cuBLASLt's
// host work) per run; lora_rows_'s row kernels read A and B once per row. Each run is its own
// group (runs differ in rows and rank). Row-major tensors are column-major transposes (gemm.cu):
//   shrink: h_sᵀ [r, rows] = A_j (column-major [in, r], op T) · x_sᵀ (column-major [in, rows])
//   expand: y_sᵀ [out, rows] += s · B_j (column-major [r, out], op T) · h_sᵀ (column-major [r, rows])
// h is one scratch [n, max rank] in x's dtype (a run's rows at its own rows, its rank's columns).
// The operands' device pointers, which cuBLAS reads from device memory, go up as one copy a call.
#include <cublas_v2.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "common.cuh"
#include "context.h"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

constexpr int64_t kPairRows = 2048;  // a run of this many rows takes its own GEMM pair

void blas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw InternalError(detail::concat("cuBLAS ", what, " failed: ", cublasGetStatusString(s)));
}

// One cuBLAS handle per device for the process; the caller holds the mutex while it uses it (the
// handle's stream is set per call).
std::mutex g_blas_mutex;
cublasHandle_t blas_handle(const DeviceContext& ctx) {
  static std::map<int, cublasHandle_t> handles;
  cublasHandle_t& h = handles[ctx.index];
  if (!h) blas_check(cublasCreate(&h), "cublasCreate");
  blas_check(cublasSetStream(h, ctx.stream), "cublasSetStream");
  return h;
}

// The per-group arrays of one grouped call (one problem per group).
struct Groups {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<float> alpha, beta;
  void add(int m_, int n_, int k_, int lda_, int ldb_, int ldc_, float alpha_, float beta_) {
    ta.push_back(CUBLAS_OP_T);
    tb.push_back(CUBLAS_OP_N);
    m.push_back(m_), n.push_back(n_), k.push_back(k_);
    lda.push_back(lda_), ldb.push_back(ldb_), ldc.push_back(ldc_);
    alpha.push_back(alpha_), beta.push_back(beta_), size.push_back(1);
  }
  // A, B and C of problem i are ptrs[i], ptrs[count + i] and ptrs[2 · count + i] (device memory).
  void run(cublasHandle_t h, void* const* ptrs, cudaDataType type, const char* what) const {
    const int count = static_cast<int>(size.size());
    blas_check(cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
                                          ptrs, type, lda.data(), ptrs + count, type, ldb.data(), beta.data(),
                                          ptrs + 2 * count, type, ldc.data(), count, size.data(), CUBLAS_COMPUTE_32F),
               what);
  }
};

}  // namespace

void lora_runs_(Tensor& y, const Tensor& x, const ops::LoraRows& t, const std::vector<ops::LoraRun>& runs) {
  LR_CHECK(x.dtype() == DType::BF16 || x.dtype() == DType::F32, "lora_runs_ (CUDA): f32 or bf16 data, got ", x.str());
  const size_t elem = dtype_size(x.dtype());
  const int in = static_cast<int>(x.dim(1)), out = static_cast<int>(y.dim(1));
  // Long runs (and a lone run) take a GEMM pair each: on their sizes cuBLASLt's tuned kernels are
  // 1.3–2× faster than the grouped ones (bench_lora_rows, one H200: two runs of 4,096 rows).
  std::vector<ops::LoraRun> grouped;
  for (const ops::LoraRun& run : runs) {
    if (!t.a[run.adapter].defined()) continue;
    if (run.end - run.begin < kPairRows && runs.size() > 1) {
      grouped.push_back(run);
      continue;
    }
    Tensor h, y_run = y.slice_rows(run.begin, run.end);
    matmul_nt(x.slice_rows(run.begin, run.end), t.a[run.adapter], h);
    matmul_nt(h, t.b[run.adapter], y_run, t.scale[run.adapter], 1.0f);
  }
  if (grouped.empty()) return;
  DeviceContext& ctx = context(x.device());
  int64_t max_rank = 0;
  for (const ops::LoraRun& run : grouped) max_rank = std::max(max_rank, t.a[run.adapter].dim(0));
  Tensor h = Tensor::empty({x.dim(0), max_rank}, x.dtype(), x.device());
  auto at = [elem](const Tensor& m, int64_t row) {
    return static_cast<void*>(static_cast<char*>(m.raw()) + row * m.dim(1) * elem);
  };
  Groups shrink, expand;
  std::vector<void*> a, b, c, ea, eb, ec;  // shrink's and expand's operands, per problem
  const int ldh = static_cast<int>(max_rank);
  for (const ops::LoraRun& run : grouped) {
    const Tensor &A = t.a[run.adapter], &B = t.b[run.adapter];
    const int r = static_cast<int>(A.dim(0)), rows = static_cast<int>(run.end - run.begin);
    shrink.add(r, rows, in, in, in, ldh, 1.0f, 0.0f);
    a.push_back(A.raw()), b.push_back(at(x, run.begin)), c.push_back(at(h, run.begin));
    expand.add(out, rows, r, r, ldh, out, t.scale[run.adapter], 1.0f);
    ea.push_back(B.raw()), eb.push_back(at(h, run.begin)), ec.push_back(at(y, run.begin));
  }
  std::vector<void*> host;  // shrink's A, B, C, then expand's
  for (const auto* v : {&a, &b, &c, &ea, &eb, &ec}) host.insert(host.end(), v->begin(), v->end());
  Tensor ptrs = Tensor::empty({static_cast<int64_t>(host.size())}, DType::I64, x.device());
  // From pageable memory: staged by the driver before the call returns, so `host` may go.
  LR_CUDA(cudaMemcpyAsync(ptrs.raw(), host.data(), host.size() * sizeof(void*), cudaMemcpyHostToDevice, ctx.stream));
  void* const* dev = static_cast<void* const*>(ptrs.raw());
  const cudaDataType type = x.dtype() == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  const std::lock_guard<std::mutex> lock(g_blas_mutex);
  cublasHandle_t handle = blas_handle(ctx);
  shrink.run(handle, dev, type, "grouped GEMM (LoRA shrink)");
  expand.run(handle, dev + 3 * a.size(), type, "grouped GEMM (LoRA expand)");
}

}  // namespace lowrank::cuda
