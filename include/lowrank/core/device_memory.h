#pragma once
// Device memory hooks for Tensor. Without the CUDA backend these throw a clear Error.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "lowrank/core/tensor.h"

namespace lowrank {

std::shared_ptr<Storage> device_allocate(size_t bytes, Device device);
void device_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// A copy that does not block the host where it can. GPU to another GPU: it runs on the
// destination's stream once the source's stream has finished the work queued before this call
// (a cross-device event; peer access is enabled on first use), so the two GPUs keep working. The
// source must stay allocated until the destination's stream has passed the copy: the caller keeps
// it until it synchronizes. Any other pair of devices: device_copy.
void device_copy_async(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// Waits until the device has finished every op queued on it (nothing to wait for on the CPU).
void device_synchronize(Device device);
void device_memset_zero(void* dst, Device device, size_t bytes);
// Peak bytes the device's allocator has taken from the driver (torch.cuda.max_memory_reserved's
// definition); 0 for the CPU.
size_t device_peak_reserved(Device device);
// The device allocator's counters now: bytes held from the driver, and the driver allocations
// (cudaMalloc) so far; zeros for the CPU.
struct DeviceMemoryCounters {
  size_t reserved = 0;
  uint64_t driver_allocations = 0;
};
DeviceMemoryCounters device_memory_counters(Device device);
// Number of CUDA devices usable now (0 without the backend or without a GPU).
int cuda_device_count();

}  // namespace lowrank

namespace lowrank {
// Throws Error("<what>: ...") if `device` cannot be used: a CUDA device in a build without the
// backend, no visible GPU, or an index past the last GPU.
void check_device(Device device, const std::string& what);
}  // namespace lowrank
