#pragma once
// One row of logits through the softmax, for the CPU cross-entropy ops (cross_entropy_sum,
// cross_entropy_backward, cross_entropy_chunk), which therefore agree bit for bit. e^x is
// exp_approx (~1 ulp of expf, as the CUDA kernel's f32 math) in loops that vectorise, compiled
// once (cross_entropy_rows.cpp, -ffp-contract=off) so that every caller rounds alike; the sum is
// accumulated in double. A libm call per element in double made the loss the largest op after the
// GEMMs of a CPU step (a 7M model with an 8k vocabulary: ~0.4 s of 3.3).
#include <cstdint>

namespace lowrank::cpu {

float row_max(const float* row, int64_t V);
// Σ e^{row[i] - mx}
double row_exp_sum(const float* row, int64_t V, float mx);
// out[i] = c · e^{row[i] - mx}, or out[i] += that with `accumulate` (out may be row).
void row_scaled_exp(const float* row, float* out, int64_t V, float mx, float c, bool accumulate);

}  // namespace lowrank::cpu
