#pragma once
// Many Philox-4x32-10 blocks at once for the CPU dropout (dropout.cpp): rng.h's words bit for bit.
#include <cstdint>

namespace lowrank::cpu {

// words[4 b + lane] = philox4x32(key, 0, first + b)[lane] for b < count.
void philox_blocks(uint64_t key, uint64_t first, int64_t count, uint32_t* words);

// The loop behind it where AVX-512 is missing (public for the tests, which check both).
void philox_blocks_loop(uint64_t key, uint64_t first, int64_t count, uint32_t* words);

}  // namespace lowrank::cpu
