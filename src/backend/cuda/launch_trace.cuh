#pragma once
// LOWRANK_DECODE_TRACE=FILE: the one-stream decode kernels (fused_decode.cu's projections, the
// attention with o in paged_attention.cu; the embedding and project_argmax) stamp each block's start, the return of its wait for the
// kernel before (programmatic dependent launch; for the attention with o: its attention's end), the
// end of its input's staging (projections) and its end with the GPU's global timer, so that a
// decode step's real timeline (kernels overlapping, gaps between them) can be read: ncu runs
// kernels one at a time and shows none of it. Each launch takes the next row of a device buffer
// (a graph replays the rows it was recorded with, so the rows hold its latest replay); at exit the
// rows are written to FILE, one line a launch: index, kernel, blocks, then nanoseconds: first and
// last block start, first and last wait return, last staging end, last end.
// bench/decode_trace.py summarises it; stamping costs the step ~5%. LOWRANK_DECODE_TRACE_BLOCKS=1
// writes every block's stamps too, a line each before the launches': B, index, kernel, block,
// start, wait, staging end, end.
#include <cstdint>

#include "common.cuh"

namespace lowrank::cuda {

struct LaunchStamp {
  unsigned long long start, wait, mid, end;
};

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// This block's stamps (null: not traced). Thread 0 stamps the start, the wait and the staging;
// every warp the end (the last one counts).
__device__ __forceinline__ LaunchStamp* block_stamps(LaunchStamp* s) {
  return s ? s + blockIdx.x + blockIdx.y * gridDim.x : nullptr;
}
__device__ __forceinline__ void stamp_start(LaunchStamp* s) {
  if (s && threadIdx.x == 0) block_stamps(s)->start = global_ns();
}
__device__ __forceinline__ void stamp_wait(LaunchStamp* s) {
  if (s && threadIdx.x == 0) block_stamps(s)->wait = global_ns();
}
__device__ __forceinline__ void stamp_mid(LaunchStamp* s) {
  if (s && threadIdx.x == 0) block_stamps(s)->mid = global_ns();
}
__device__ __forceinline__ void stamp_end(LaunchStamp* s) {
  if (s && (threadIdx.x & 31) == 0) atomicMax(&block_stamps(s)->end, global_ns());
}

// The stamps of the next launch of `kernel` with `blocks` blocks on d, or null when tracing is off.
LaunchStamp* next_launch_stamps(Device d, const char* kernel, int64_t blocks);

}  // namespace lowrank::cuda
