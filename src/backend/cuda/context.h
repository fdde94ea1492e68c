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
  // Two counters for kernels whose blocks hand work to one another within a launch (fused_decode.cu:
  // LoRA's shrinks formed by a few blocks, read by the others' epilogues). Zero between launches:
  // such a kernel's last block zeroes them, and the stream runs one kernel's handoff at a time.
  unsigned* grid_counters = nullptr;
};

// Checks d (Error if it does not exist), makes it current and returns its context.
DeviceContext& context(Device d);

}  // namespace lowrank::cuda
