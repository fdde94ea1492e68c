// lowrank/core/device_event.h for builds with the CUDA backend.
#include "common.cuh"
#include "context.h"
#include "lowrank/core/device_event.h"

namespace lowrank {

DeviceEvent::DeviceEvent(Device device) : device_(device) {
  LR_CHECK(device.is_cuda(), "DeviceEvent: ", device.str(), " is not a CUDA device");
  cuda::stream_for(device);  // makes the device current
  cudaEvent_t e;
  LR_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

DeviceEvent::~DeviceEvent() { cudaEventDestroy(static_cast<cudaEvent_t>(event_)); }

void DeviceEvent::record() { LR_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), cuda::stream_for(device_))); }

void DeviceEvent::wait() { LR_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(event_))); }

}  // namespace lowrank
