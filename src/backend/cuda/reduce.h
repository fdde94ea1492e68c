#pragma once
// Deterministic reductions shared by several ops (reduce.cu): the same inputs give the same bits
// on every run, because the work split depends only on the shape and partial sums are added in a
// fixed order (no floating-point atomics).
#include <cuda_runtime.h>

#include <cstdint>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

// dst[c] += Σ_r src[r, c] for src [rows, cols] (F32 or BF16, row-major); dst is f32 on device d.
void column_sum_add(const void* src, DType dtype, int64_t rows, int64_t cols, float* dst, Device d);
// *acc += Σ x[i] (or Σ x[i]² when squares), x F32 or BF16, summed in double.
void sum_to_f64(const void* x, DType dtype, int64_t n, bool squares, double* acc, Device d);

}  // namespace lowrank::cuda
