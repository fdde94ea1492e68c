// Used when the CUDA backend is not compiled in.
#ifndef LOWRANK_WITH_CUDA
#include <cstring>

#include "lowrank/core/device_event.h"
#include "lowrank/core/device_graph.h"
#include "lowrank/core/device_memory.h"
#include "lowrank/core/host_staging.h"

namespace lowrank {

static Error no_cuda() {
  return Error("this lowrank was built without the CUDA backend (rebuild with -DLOWRANK_CUDA=ON)");
}
std::shared_ptr<Storage> device_allocate(size_t, Device) { throw no_cuda(); }
void device_copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  throw no_cuda();
}
void device_copy_async(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  device_copy(dst, dd, src, sd, bytes);
}
void device_synchronize(Device d) {
  if (!d.is_cpu()) throw no_cuda();
}
void device_memset_zero(void*, Device, size_t) { throw no_cuda(); }
int cuda_device_count() { return 0; }
size_t device_peak_reserved(Device) { return 0; }
DeviceMemoryCounters device_memory_counters(Device) { return {}; }

class DeviceGraphPool {};
std::shared_ptr<DeviceGraphPool> make_device_graph_pool(Device) { throw no_cuda(); }
bool DeviceGraph::supported(Device) { return false; }
DeviceGraph::DeviceGraph(Device, std::shared_ptr<DeviceGraphPool>) { throw no_cuda(); }
DeviceGraph::~DeviceGraph() = default;
void DeviceGraph::record(const std::function<void()>&) { throw no_cuda(); }
void DeviceGraph::replay() { throw no_cuda(); }

HostStaging::HostStaging(Device device, size_t bytes) : device_(device), capacity_(bytes) { throw no_cuda(); }
HostStaging::~HostStaging() = default;
void HostStaging::upload(void*, size_t) { throw no_cuda(); }
void HostStaging::download(const void*, size_t) { throw no_cuda(); }
void HostStaging::upload_beside(void*, size_t, const DeviceEvent&) { throw no_cuda(); }
void HostStaging::download_beside(const void*, size_t, const DeviceEvent&) { throw no_cuda(); }
void HostStaging::device_waits() { throw no_cuda(); }
void HostStaging::wait() { throw no_cuda(); }

DeviceEvent::DeviceEvent(Device device) : device_(device) { throw no_cuda(); }
DeviceEvent::~DeviceEvent() = default;
void DeviceEvent::record() { throw no_cuda(); }
void DeviceEvent::wait() { throw no_cuda(); }

}  // namespace lowrank
#endif
