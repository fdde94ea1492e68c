// Segmented LoRA on the CPU: the reference for the CUDA kernels. lora_rows_: each row with an
// adapter is its own shrink (h = x A_jᵀ, [r_j]) and expand (y += s_j · h B_jᵀ), in f32 like the
// GPU's accumulators. lora_runs_: a GEMM pair per run.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "lowrank/core/error.h"

namespace lowrank::cpu {

void lora_rows_(Tensor& y, const Tensor& x, const ops::LoraRows& t) {
  LR_CHECK(x.dtype() == DType::F32 && t.rows.device().is_cpu(), "lora_rows_ (CPU): f32 data expected, got ", x.str());
  const int64_t n = x.dim(0), in = x.dim(1), out = y.dim(1);
  const auto adapters = static_cast<int64_t>(t.a.size());
  const int32_t* rows = t.rows.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    if (rows[i] < -1 || rows[i] >= adapters)
      throw error("lora_rows_: row ", i, " names adapter ", rows[i], " of ", adapters);
  int64_t max_rank = 0;
  for (const Tensor& a : t.a) max_rank = std::max<int64_t>(max_rank, a.defined() ? a.dim(0) : 0);
  const bool parallel = n * max_rank * (in + out) >= (int64_t(1) << 20);  // threads only for real work
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) {
    const int32_t j = rows[i];
    if (j < 0 || !t.a[j].defined()) continue;  // no adapter, or one that does not adapt this projection
    const Tensor &A = t.a[j], &B = t.b[j];
    const int64_t r = A.dim(0);
    const float* xi = x.f32() + i * in;
    std::vector<float> h(r);
    for (int64_t k = 0; k < r; ++k) {
      const float* ak = A.f32() + k * in;
      float acc = 0;
      for (int64_t c = 0; c < in; ++c) acc += xi[c] * ak[c];
      h[k] = acc;
    }
    float* yi = y.f32() + i * out;
    for (int64_t o = 0; o < out; ++o) {
      const float* bo = B.f32() + o * r;
      float acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += h[k] * bo[k];
      yi[o] += t.scale[j] * acc;
    }
  }
}

void lora_runs_(Tensor& y, const Tensor& x, const ops::LoraRows& t, const std::vector<ops::LoraRun>& runs) {
  for (const ops::LoraRun& run : runs) {
    if (!t.a[run.adapter].defined()) continue;
    Tensor h, y_run = y.slice_rows(run.begin, run.end);
    matmul_nt(x.slice_rows(run.begin, run.end), t.a[run.adapter], h);       // [rows, r]
    matmul_nt(h, t.b[run.adapter], y_run, t.scale[run.adapter], 1.0f);  // y_run += s · h Bᵀ
  }
}

}  // namespace lowrank::cpu
