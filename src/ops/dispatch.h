#pragma once
// How every lowrank::ops function picks its backend: all defined tensors of a call must be on one
// device; CPU tensors go to lowrank::cpu, CUDA tensors to lowrank::cuda (when compiled in).
#include <initializer_list>

#include "backend/cpu/cpu_ops.h"
#include "lowrank/core/tensor.h"
#include "lowrank/ops/profile.h"
#ifdef LOWRANK_WITH_CUDA
#include "backend/cuda/cuda_ops.h"
#endif

namespace lowrank::ops::detail {

// The device of the defined tensors among `ts` (cpu if none is defined). Throws Error when they are
// on different devices, or on a CUDA device in a build without the CUDA backend.
Device op_device(const char* op, std::initializer_list<const Tensor*> ts);

}  // namespace lowrank::ops::detail

// `return` the backend's result for `call` (a function call expression without namespace), timed
// by the step profiler under the op's category (lowrank/ops/profile.h).
#ifdef LOWRANK_WITH_CUDA
#define LR_DISPATCH(device, call)                           \
  do {                                                      \
    const ::lowrank::profile::OpScope lr_op_scope_(#call);  \
    if ((device).is_cuda()) return ::lowrank::cuda::call;   \
    return ::lowrank::cpu::call;                            \
  } while (0)
#else
#define LR_DISPATCH(device, call)                           \
  do {                                                      \
    const ::lowrank::profile::OpScope lr_op_scope_(#call);  \
    (void)(device);                                         \
    return ::lowrank::cpu::call;                            \
  } while (0)
#endif
