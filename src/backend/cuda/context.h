#pragma once
// Per-device state of the CUDA backend, created on first use and kept for the process: the stream
// every op of the device runs on, the cuBLASLt handle and its workspace, the device properties;
// and, made on first use, a second context for side work (lowrank/ops/side_work.h): its own
// stream and cuBLASLt workspace, the rest shared.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

struct DeviceContext {
  int index = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;  // cuBLASLt scratch, owned here (not from the caching allocator)
  size_t workspace_bytes = 0;
  cudaDeviceProp props{};
  std::string description;
  // Counters for kernels whose blocks hand work to one another within a launch: fused_decode.cu's
  // two (LoRA's shrinks formed by a few blocks, read by the others' epilogues), then one per part of
  // paged_attention_residual's o rows (the last head's block of a part sums them), then
  // project_argmax's blocks done (the last merges their picks). Zero between launches: such a
  // kernel's last blocks zero them, and the stream runs one handoff at a time.
  unsigned* grid_counters = nullptr;  // [kGridCounters]
  static constexpr int kGridCounters = 2 + 64 + 1;
  DeviceContext* side = nullptr;  // the side-work context (null until used); in it: null
  DeviceContext* main = nullptr;  // in the side-work context: the device's context; else null
};

// The device whose ops this thread queues on its side stream now (side_stream.cu), -1: none.
extern thread_local int t_side_work_device;

// Checks d (Error if it does not exist), makes it current and returns its context: the side-work
// context while this thread is inside a side-work scope of d.
DeviceContext& context(Device d);
// The side-work context of a device's context, made on first use.
DeviceContext& side_context(DeviceContext& main);
// Waits for the main and the side stream of ctx's device.
void synchronize_streams(DeviceContext& ctx);
// A block freed inside a side-work scope: held until that work is joined (side_stream.cu).
void defer_side_free(Device d, void* p, size_t size_class);

}  // namespace lowrank::cuda
