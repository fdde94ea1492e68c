#pragma once
// Programmatic dependent launch (Hopper and newer): a kernel launched by launch_kernel(true, ...) may
// start while the kernel before it on the stream is still running. Its blocks take SM slots as
// the earlier kernel's blocks leave and load what no kernel of the step writes (weights) before
// they wait for the earlier grid; the launch and the first memory latency overlap the earlier
// kernel's tail. A one-stream decode step is ~120 such short kernels, each mostly latency.
//
// A kernel launched this way must follow two rules:
//  - before wait_for_prior_grids() it reads only data no earlier kernel of the stream may still
//    write (weights, its arguments) and writes nothing;
//  - it calls allow_dependents() once per block, right after its wait: then at most one grid
//    waits ahead of the running one (allowed at the start, chains of waiting grids formed: the
//    Qwen2.5-0.5B shape's one stream 1,165 against 1,225 tok/s on an H200). Without the call,
//    the next kernel starts only as this one's blocks exit.
// Everything after the wait sees the earlier kernels' writes, transitively: a grid completes only
// after its own wait has returned. An ordinary kernel may call allow_dependents() too (at its
// start): the dependent after it then loads its weights while it runs.
#include <cuda_runtime.h>

#include <utility>

#include "common.cuh"

namespace lowrank::cuda {

__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether kernels on d launch as dependents: compute capability 9.0+, and not turned off by
// LOWRANK_DEPENDENT_LAUNCH=0 (for A/B timing).
bool dependent_launch(Device d);

// kernel<<<grid, block, smem, d's stream>>>(args...), as a programmatic dependent when `dependent`
// and d has it.
template <typename... Params, typename... Args>
void launch_kernel(bool dependent, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Device d,
                   Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream_for(d);
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = dependent && dependent_launch(d) ? 1 : 0;
  LR_CUDA(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace lowrank::cuda
