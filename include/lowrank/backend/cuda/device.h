#pragma once
// CUDA device management visible to the rest of lowrank (no CUDA headers needed): device checks,
// stream synchronisation and the caching allocator's statistics. Only in LOWRANK_WITH_CUDA builds.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

// Throws Error unless `d` names a visible GPU: "--device cuda: no CUDA GPU is visible" or
// "--device cuda:3: only 1 CUDA GPU is visible (cuda:0)".
void check_device(Device d);
// Waits for all work queued on the device's stream (every op of a device runs on that stream) and
// on its side stream.
void synchronize(Device d);
// The device's cudaStream_t, for callers that time work with CUDA events or add their own kernels.
void* native_stream(Device d);
// Name, multiprocessors and memory of the GPU, one line (for logs and benchmarks).
const char* device_description(Device d);

struct AllocatorStats {
  size_t in_use = 0;        // bytes handed out and not yet freed (rounded to size classes)
  size_t cached = 0;        // bytes in the free lists, ready for reuse without cudaMalloc
  size_t peak_in_use = 0;
  // Bytes taken from cudaMalloc and not yet returned (in_use + cached), and its peak: the
  // definition of torch.cuda.max_memory_reserved, the number to compare with PyTorch.
  size_t reserved = 0;
  size_t peak_reserved = 0;
  uint64_t device_mallocs = 0;  // cudaMalloc calls so far (a steady-state step loop adds none)
  uint64_t reuses = 0;          // allocations served from the free lists
};
AllocatorStats allocator_stats(Device d);
// Returns every cached block of the device to the driver (cudaFree).
void empty_cache(Device d);
// Starts the peaks (peak_in_use, peak_reserved) again from the current values.
void reset_peak_stats(Device d);
// Tests: when on, every allocation is filled with 0xFF bytes (NaN in f32/bf16, -1 in I32) before
// it is handed out, so an op that leaves part of its output unwritten fails its comparison.
void set_poison_allocations(bool on);
// Timing markers for the step profiler (lowrank/ops/profile.h): an event recorded now on the
// device's stream, from a per-device pool that reset_timing_events() rewinds; elapsed time between
// two recorded events in milliseconds (waits for the later one).
void* record_timing_event(Device d);
void reset_timing_events(Device d);
float timing_event_elapsed_ms(void* from, void* to);
// The side stream behind lowrank::ops::SideWork (lowrank/ops/side_work.h). begin: this thread's
// ops on d go to d's side stream, after what the main stream has queued; end: back to the main
// stream, the side work so far recorded as one entry that keeps `keep` (and the blocks freed
// meanwhile) until joined.
void begin_side_work(Device d);
void end_side_work(Device d, std::vector<Tensor> keep);
uint64_t side_work_mark(Device d);
void join_side_work(Device d, uint64_t before);
// The size class an allocation of `bytes` is rounded up to (exposed for tests).
size_t allocation_size_class(size_t bytes);

}  // namespace lowrank::cuda
