// lowrank/core/host_staging.h for builds with the CUDA backend.
#include "common.cuh"
#include "context.h"
#include "lowrank/core/host_staging.h"

namespace lowrank {

HostStaging::HostStaging(Device device, size_t bytes) : device_(device), capacity_(bytes) {
  LR_CHECK(device.is_cuda(), "HostStaging: ", device.str(), " is not a CUDA device");
  cuda::stream_for(device);  // makes the device current
  LR_CUDA(cudaMallocHost(&host_, capacity_ > 0 ? capacity_ : 1));
  cudaEvent_t e;
  const cudaError_t made = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  if (made != cudaSuccess) cudaFreeHost(host_);  // the destructor does not run for a throwing constructor
  LR_CUDA(made);
  event_ = e;
}

HostStaging::~HostStaging() {
  cudaEventSynchronize(static_cast<cudaEvent_t>(event_));  // a copy in flight still uses host_
  cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  cudaFreeHost(host_);
}

void HostStaging::upload(void* dst, size_t bytes) {
  LR_CHECK(bytes <= capacity_, "HostStaging: ", bytes, " bytes from room for ", capacity_);
  cudaStream_t s = cuda::stream_for(device_);
  LR_CUDA(cudaMemcpyAsync(dst, host_, bytes, cudaMemcpyHostToDevice, s));
  LR_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), s));
}

void HostStaging::download(const void* src, size_t bytes) {
  LR_CHECK(bytes <= capacity_, "HostStaging: ", bytes, " bytes into room for ", capacity_);
  cudaStream_t s = cuda::stream_for(device_);
  LR_CUDA(cudaMemcpyAsync(host_, src, bytes, cudaMemcpyDeviceToHost, s));
  LR_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), s));
}

namespace {

// The staging's copy stream (made on first use), set to wait for `after`.
cudaStream_t copy_stream_after(Device device, void*& stream, const DeviceEvent& after) {
  LR_CHECK(after.device() == device, "HostStaging: an event of ", after.device().str(), " for a copy with ",
           device.str());
  cuda::stream_for(device);  // makes the device current
  if (!stream) {
    cudaStream_t s;
    LR_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    stream = s;
  }
  auto s = static_cast<cudaStream_t>(stream);
  LR_CUDA(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(after.handle()), 0));
  return s;
}

}  // namespace

void HostStaging::upload_beside(void* dst, size_t bytes, const DeviceEvent& after) {
  LR_CHECK(bytes <= capacity_, "HostStaging: ", bytes, " bytes from room for ", capacity_);
  cudaStream_t s = copy_stream_after(device_, stream_, after);
  LR_CUDA(cudaMemcpyAsync(dst, host_, bytes, cudaMemcpyHostToDevice, s));
  LR_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), s));
  device_waits();
}

void HostStaging::download_beside(const void* src, size_t bytes, const DeviceEvent& after) {
  LR_CHECK(bytes <= capacity_, "HostStaging: ", bytes, " bytes into room for ", capacity_);
  cudaStream_t s = copy_stream_after(device_, stream_, after);
  LR_CUDA(cudaMemcpyAsync(host_, src, bytes, cudaMemcpyDeviceToHost, s));
  LR_CUDA(cudaEventRecord(static_cast<cudaEvent_t>(event_), s));
}

void HostStaging::device_waits() {
  LR_CUDA(cudaStreamWaitEvent(cuda::stream_for(device_), static_cast<cudaEvent_t>(event_), 0));
}

void HostStaging::wait() { LR_CUDA(cudaEventSynchronize(static_cast<cudaEvent_t>(event_))); }

}  // namespace lowrank
