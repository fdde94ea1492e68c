#include "lowrank/dist/communicator.h"

#include <set>

#include "lowrank/core/error.h"
#include "lowrank/dist/in_process_communicator.h"
#include "nccl_communicator.h"

namespace lowrank::dist {

std::unique_ptr<Communicator> make_communicator(const std::vector<Device>& devices) {
  if (devices.empty()) throw error("no devices for the data-parallel group");
  bool all_cpu = true, all_cuda = true;
  std::set<int> gpus;
  std::vector<int> order;
  for (const Device& d : devices) {
    all_cpu = all_cpu && d.is_cpu();
    all_cuda = all_cuda && d.is_cuda();
    if (d.is_cuda()) {
      if (!gpus.insert(d.index).second) throw error("--devices names ", d.str(), " twice");
      order.push_back(d.index);
    }
  }
  if (all_cpu) return std::make_unique<InProcessCommunicator>(static_cast<int>(devices.size()));
  if (all_cuda) return make_nccl_communicator(order);
  throw error("--devices mixes the CPU and GPUs: give only cpu entries or only cuda:N entries");
}

}  // namespace lowrank::dist
