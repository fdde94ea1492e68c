#pragma once
// The caching allocator behind device_allocate() (allocator.cu); statistics are in device.h.
#include <cstddef>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

// A block of at least `bytes` on d; *size_class gets its real size (pass it back to cached_free).
// Throws Error naming the bytes when the GPU is out of memory.
void* cached_malloc(Device d, size_t bytes, size_t* size_class);
void cached_free(Device d, void* p, size_t size_class);

}  // namespace lowrank::cuda
