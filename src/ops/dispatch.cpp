#include "dispatch.h"

namespace lowrank::ops::detail {

Device op_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (!first) {
      first = t;
    } else if (!(t->device() == first->device())) {
      throw error(op, ": tensors on different devices (", first->device().str(), " and ", t->device().str(),
                  "); move them to one device first");
    }
  }
  const Device d = first ? first->device() : Device::cpu();
#ifndef LOWRANK_WITH_CUDA
  if (d.is_cuda())
    throw error(op, ": tensor on ", d.str(),
                ", but this lowrank was built without the CUDA backend (rebuild with -DLOWRANK_CUDA=ON)");
#endif
  return d;
}

}  // namespace lowrank::ops::detail
