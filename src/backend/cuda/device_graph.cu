// DeviceGraph (lowrank/core/device_graph.h) on CUDA: stream capture of the device's one stream
// into a cudaGraph, instantiated once and launched per replay. Allocations during the capture come
// from the graph's pool (allocator.cu), so the addresses the graph holds are never handed to
// anybody else.
#include "allocator.h"
#include "common.cuh"
#include "context.h"
#include "lowrank/backend/cuda/device.h"
#include "lowrank/core/device_graph.h"
#include "lowrank/core/device_memory.h"

namespace lowrank {

class DeviceGraphPool {
 public:
  explicit DeviceGraphPool(Device d) : pool(cuda::new_graph_pool(d)) {}
  ~DeviceGraphPool() { cuda::delete_graph_pool(pool); }
  cuda::GraphPool* const pool;
};

std::shared_ptr<DeviceGraphPool> make_device_graph_pool(Device device) {
  LR_CHECK(device.is_cuda(), "graph pool on ", device.str());
  return std::make_shared<DeviceGraphPool>(device);
}

bool DeviceGraph::supported(Device device) { return device.is_cuda() && cuda_device_count() > device.index; }

DeviceGraph::DeviceGraph(Device device, std::shared_ptr<DeviceGraphPool> pool)
    : device_(device), pool_(std::move(pool)) {
  LR_CHECK(supported(device) && pool_, "DeviceGraph on ", device.str());
}

DeviceGraph::~DeviceGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
}

void DeviceGraph::record(const std::function<void()>& body) {
  LR_CHECK(!exec_, "DeviceGraph::record: already recorded");
  cudaStream_t stream = cuda::stream_for(device_);
  // Relaxed: the allocator may still call cudaMalloc for a new block of the pool.
  LR_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  cuda::set_recording_pool(pool_->pool);
  cudaGraph_t graph = nullptr;
  try {
    body();
    cuda::join_side_work(device_, UINT64_MAX);  // a recording ends on one stream (ops/side_work.h)
  } catch (...) {
    try {  // while still recording: the side stream's events belong to this capture
      cuda::join_side_work(device_, UINT64_MAX);
    } catch (...) {
    }
    cuda::set_recording_pool(nullptr);
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  cuda::set_recording_pool(nullptr);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  if (end != cudaSuccess) {
    cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    throw error("recording a CUDA graph failed: ", cudaGetErrorString(end),
                " (an op synchronized or copied from the host while recording)");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    cudaGetLastError();
    throw error("instantiating a CUDA graph failed: ", cudaGetErrorString(inst));
  }
  exec_ = exec;
}

void DeviceGraph::replay() {
  LR_CHECK(exec_, "DeviceGraph::replay before record");
  LR_CUDA(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), cuda::stream_for(device_)));
}

}  // namespace lowrank
