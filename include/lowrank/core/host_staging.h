#pragma once
// Page-locked host memory for copies to and from a device that the host does not wait for at
// once, and an event after the last one queued. A decode step reads back its tokens and uploads
// the next step's inputs this way while the device still runs the step before (a copy from
// ordinary, pageable memory would first wait for the device's stream to drain).
#include <cstddef>

#include "lowrank/core/device_event.h"
#include "lowrank/core/tensor.h"

namespace lowrank {

class HostStaging {
 public:
  // `bytes` of host memory for copies with `device` (a CUDA device; Error without the backend).
  HostStaging(Device device, size_t bytes);
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;

  // The host side. Write it only once an upload queued from it has run (wait()); read it only
  // once a download into it has.
  void* data() { return host_; }
  size_t capacity() const { return capacity_; }
  // Queue a copy of the first `bytes` of data() to device memory dst, or of device memory src
  // into data(), on the device's stream after what is queued there now.
  void upload(void* dst, size_t bytes);
  void download(const void* src, size_t bytes);
  // The same copies beside the device's stream: on this staging's own copy stream, once the
  // device has reached `after` (not behind the work queued on the device's stream since).
  // upload_beside: what is queued on the device's stream from now on runs after the copy.
  // download_beside: the device's stream does not wait for it; device_waits() orders its later
  // work (one that overwrites src) after it.
  void upload_beside(void* dst, size_t bytes, const DeviceEvent& after);
  void download_beside(const void* src, size_t bytes, const DeviceEvent& after);
  // What is queued on the device's stream from now on runs after this staging's copies so far.
  void device_waits();
  // Waits until the copies queued so far have run.
  void wait();

 private:
  Device device_;
  size_t capacity_;
  void* host_ = nullptr;   // page-locked [capacity_]
  void* event_ = nullptr;  // cudaEvent_t, recorded after each copy
  void* stream_ = nullptr;  // cudaStream_t of the copies beside the device's stream (made on first use)
};

}  // namespace lowrank
