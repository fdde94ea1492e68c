#pragma once
// Per-device state of the CUDA backend, created on first use and kept for the process: the stream
// every op of the device runs on, the cuBLASLt handle and its workspace, the device properties.
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
  // paged_attention_residual's o rows (the last head's block of a part sums them). Zero between
  // launches: such a kernel's last blocks zero them, and the stream runs one handoff at a time.
  unsigned* grid_counters = nullptr;  // [kGridCounters]
  static constexpr int kGridCounters = 2 + 64;
};

// Checks d (Error if it does not exist), makes it current and returns its context.
DeviceContext& context(Device d);

}  // namespace lowrank::cuda
