#include <string>

#include "lowrank/core/device_memory.h"

namespace lowrank {

void check_device(Device device, const std::string& what) {
  if (device.is_cpu()) return;
#ifndef LOWRANK_WITH_CUDA
  throw error(what, ": this lowrank was built without the CUDA backend (rebuild with -DLOWRANK_CUDA=ON)");
#else
  const int n = cuda_device_count();
  if (n == 0) throw error(what, ": no CUDA GPU is visible");
  if (device.index >= n)
    throw error(what, ": only ", n, " CUDA GPU", n == 1 ? " is" : "s are", " visible (cuda:0",
                n > 1 ? "..cuda:" + std::to_string(n - 1) : std::string(), ")");
#endif
}

}  // namespace lowrank
