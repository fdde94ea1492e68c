// Segmented LoRA on the CPU: the reference for the CUDA kernels. Each row with an adapter is its
// own shrink (h = x A_jᵀ, [r_j]) and expand (y += s_j · h B_jᵀ), in f32 like the GPU's accumulators.
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

}  // namespace lowrank::cpu
