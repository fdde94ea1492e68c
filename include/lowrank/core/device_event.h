#pragma once
// A point in a device's stream of work (a CUDA event): recorded after what is queued on the
// stream, then waited for by the host, or ordering a copy beside the stream after it
// (HostStaging::upload_beside / download_beside). A decode step that is replayed ahead marks its
// end with one, so that the copies of the step after it need not queue behind it.
#include "lowrank/core/tensor.h"

namespace lowrank {

class DeviceEvent {
 public:
  // An event of `device` (a CUDA device; Error without the backend), not yet recorded.
  explicit DeviceEvent(Device device);
  ~DeviceEvent();
  DeviceEvent(const DeviceEvent&) = delete;
  DeviceEvent& operator=(const DeviceEvent&) = delete;

  // Marks the end of the work queued on the device's stream now (outside a graph recording).
  void record();
  // Waits until the device has reached the last mark (at once when never recorded).
  void wait();
  Device device() const { return device_; }
  void* handle() const { return event_; }  // cudaEvent_t, for the backend

 private:
  Device device_;
  void* event_ = nullptr;
};

}  // namespace lowrank
