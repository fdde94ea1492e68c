// The core device-memory hooks (lowrank/core/device_memory.h) for builds with the CUDA backend.
// Copies and memsets are queued on the device's stream; a copy to the host waits for it.
#include <cstring>
#include <mutex>
#include <set>
#include <utility>

#include "allocator.h"
#include "common.cuh"
#include "context.h"
#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/device_memory.h"

namespace lowrank {

int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: not an error, just no GPU
      return 0;
    }
    return n;
  }();
  return count;
}

size_t device_peak_reserved(Device device) {
  return device.is_cuda() ? cuda::allocator_stats(device).peak_reserved : 0;
}

DeviceMemoryCounters device_memory_counters(Device device) {
  if (!device.is_cuda()) return {};
  const cuda::AllocatorStats st = cuda::allocator_stats(device);
  return {st.reserved, st.device_mallocs};
}

std::shared_ptr<Storage> device_allocate(size_t bytes, Device device) {
  size_t size_class = 0;
  void* p = cuda::cached_malloc(device, bytes, &size_class);
  return std::make_shared<Storage>(p, bytes, device,
                                   [device, size_class](void* q) { cuda::cached_free(device, q, size_class); });
}

void device_copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (bytes == 0) return;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  if (sd.is_cpu()) {  // host -> device: pageable memory is staged before the call returns
    cudaStream_t s = cuda::stream_for(dd);
    // A graph recording would keep this copy's data, not the next replay's: refuse it, so that
    // DeviceGraph::record fails (and the caller runs without a graph) instead of replaying stale inputs.
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    LR_CUDA(cudaStreamIsCapturing(s, &capturing));
    if (capturing != cudaStreamCaptureStatusNone) throw error("a host-to-device copy while recording a CUDA graph");
    LR_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    return;
  }
  if (dd.is_cpu()) {  // device -> host: the caller reads dst next, so wait
    // Side work not joined yet (a caller outside the model's backward) may still be writing src.
    if (cuda::t_side_work_device != sd.index) cuda::join_side_work(sd, UINT64_MAX);
    cudaStream_t s = cuda::stream_for(sd);
    LR_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    LR_CUDA(cudaStreamSynchronize(s));
    return;
  }
  if (dd == sd) {
    LR_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::stream_for(dd)));
    return;
  }
  // Across GPUs: finish the source's queued work, then copy on the destination's stream.
  cuda::synchronize(sd);
  LR_CUDA(cudaMemcpyPeerAsync(dst, dd.index, src, sd.index, bytes, cuda::stream_for(dd)));
}

namespace {

// Lets `to` read and write `from`'s memory directly (NVLink / PCIe peer to peer) when the hardware
// allows; once per ordered pair. Without it cudaMemcpyPeerAsync still works, staged by the driver.
void enable_peer_access(Device to, Device from) {
  static std::mutex mutex;
  static std::set<std::pair<int, int>> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (!done.insert({to.index, from.index}).second) return;
  int can = 0;
  LR_CUDA(cudaDeviceCanAccessPeer(&can, to.index, from.index));
  if (!can) return;
  cuda::stream_for(to);  // makes `to` the current device
  const cudaError_t e = cudaDeviceEnablePeerAccess(from.index, 0);
  if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();  // NCCL may have done it
  else LR_CUDA(e);
}

}  // namespace

void device_copy_async(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (bytes == 0) return;
  if (!dd.is_cuda() || !sd.is_cuda() || dd == sd) {
    device_copy(dst, dd, src, sd, bytes);
    return;
  }
  enable_peer_access(dd, sd);
  // The source's work so far, as an event the destination's stream waits for (no host wait).
  cudaStream_t source = cuda::stream_for(sd);  // current device: sd, where the event must live
  cudaEvent_t ready;
  LR_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  LR_CUDA(cudaEventRecord(ready, source));
  cudaStream_t dest = cuda::stream_for(dd);
  LR_CUDA(cudaStreamWaitEvent(dest, ready, 0));
  LR_CUDA(cudaMemcpyPeerAsync(dst, dd.index, src, sd.index, bytes, dest));
  LR_CUDA(cudaEventDestroy(ready));  // released once the wait has been satisfied
}

void device_synchronize(Device d) {
  if (d.is_cuda()) cuda::synchronize(d);
}

void device_memset_zero(void* dst, Device device, size_t bytes) {
  if (bytes == 0) return;
  LR_CUDA(cudaMemsetAsync(dst, 0, bytes, cuda::stream_for(device)));
}

}  // namespace lowrank
