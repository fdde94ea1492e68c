#pragma once
// LoRA's GEMMs on the GPU at a rank that is not a multiple of 8 (1, 2, 4, 12, ...): rows of
// h = x Aᵀ, g = dy B and B of a size that is not a multiple of 16 bytes leave cuBLASLt only its
// slow kernels (at r = 4 the six GEMMs of a projection take 1.3–1.7× r = 8's time on an H200), so
// r = 4 trained slower than r = 16. The GPU computes at the next multiple of 8: A with zero rows
// [rc, in], B with zero columns [out, rc] (the training working copies are kept that way, AdamW
// writing their top-left blocks); h and g then carry zero columns, which add exact zeros to every
// product, and the backward writes the gradients of the real r rows / columns only. Same values;
// the adapter's tensors (masters, gradients, files) keep their rank.
#include <cstdint>

#include "lowrank/core/tensor.h"

namespace lowrank::lora {

// The rank LoRA's GEMMs run at on `device`: r, or on CUDA r rounded up to a multiple of 8
// (LOWRANK_PAD_RANK=0: r, for measurements).
int64_t compute_rank(int64_t r, Device device);
// value [rows, cols] converted into the block of `out` (2-D, large enough; the rest untouched) at
// its first rows and columns [col, col + cols) (the top-left block when col is 0: a padded working
// copy; elsewhere: B inside the K-extended weight, k_extension.h), or cast_into_ when their sizes
// match and col is 0.
void cast_into_block(Tensor& out, const Tensor& value, int64_t col = 0);
// A new [rows, cols] tensor of `dtype`: value in its top-left block, zeros elsewhere.
Tensor padded(const Tensor& value, int64_t rows, int64_t cols, DType dtype);

}  // namespace lowrank::lora
