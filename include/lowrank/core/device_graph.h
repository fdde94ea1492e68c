#pragma once
// DeviceGraph: the ops a piece of code queues on a device, recorded once and replayed with one
// launch (a CUDA graph). For short steps of many small kernels (a decode step) the host's launch
// cost is most of the time; a replay removes it.
//
// What a recording may do: queue ops on the device; allocate tensors (they come from the graph's
// memory pool, which keeps them reserved for the replays). What it may not: copy from or to the
// host, synchronize, or keep pointers that change later — a replay reads and writes exactly the
// addresses the recording used. Inputs therefore live in tensors allocated before the recording
// and refilled before each replay; outputs are tensors the recording returns, read after a replay.
// Several graphs may share one pool when they never run at the same time (one stream) and each
// replay's outputs are read before the next replay.
#include <functional>
#include <memory>

#include "lowrank/core/tensor.h"

namespace lowrank {

// Device memory set aside for graph recordings (opaque).
class DeviceGraphPool;
std::shared_ptr<DeviceGraphPool> make_device_graph_pool(Device device);

class DeviceGraph {
 public:
  // Whether graphs can be recorded on `device` (a CUDA device in a build with the backend).
  static bool supported(Device device);
  DeviceGraph(Device device, std::shared_ptr<DeviceGraphPool> pool);
  ~DeviceGraph();
  DeviceGraph(const DeviceGraph&) = delete;
  DeviceGraph& operator=(const DeviceGraph&) = delete;

  // Records what `body` queues on the device without running it. Throws Error (and leaves the
  // graph empty) when the body did something a recording cannot hold.
  void record(const std::function<void()>& body);
  // Queues the recorded ops on the device's stream (asynchronous, like any op).
  void replay();
  bool recorded() const { return exec_ != nullptr; }

 private:
  Device device_;
  std::shared_ptr<DeviceGraphPool> pool_;
  void* exec_ = nullptr;  // cudaGraphExec_t
};

}  // namespace lowrank
