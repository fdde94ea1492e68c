#pragma once
// The caching allocator behind device_allocate() (allocator.cu); statistics are in device.h.
#include <cstddef>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

// A block of at least `bytes` on d; *size_class gets its real size (pass it back to cached_free).
// Inside a ShapesVary scope (lowrank/core/shapes_vary.h) a size whose class has no cached block
// takes a cached block of up to twice its size before asking the driver. Throws Error naming the
// bytes when the GPU is out of memory.
void* cached_malloc(Device d, size_t bytes, size_t* size_class);
void cached_free(Device d, void* p, size_t size_class);

// The memory of graph recordings (device_graph.cu). While a thread's recording pool is set, its
// allocations on the pool's device come from the pool, and blocks it frees stay there.
struct GraphPool;
GraphPool* new_graph_pool(Device d);
void delete_graph_pool(GraphPool* pool);  // the pool's free blocks go back to the device's cache
void set_recording_pool(GraphPool* pool);  // null: none

}  // namespace lowrank::cuda
