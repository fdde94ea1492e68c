#pragma once
// The CPU dropout's draws over one run of elements, on the calling thread: what ops::dropout does
// in parallel (dropout.cpp) and what the fused LoRA shrink draws a block of rows at a time
// (dropout_shrink.cpp), the same draws bit for bit.
#include <cstdint>

namespace lowrank::cpu {

// For i < n, element i being stream position offset + i of the dropout draws (philox.h):
// mask[i] = kept, dst[i] = kept ? src[i] / keep : 0.
void dropout_run(uint64_t seed, uint64_t offset, const float* src, float* dst, uint8_t* mask, int64_t n, float keep);

}  // namespace lowrank::cpu
