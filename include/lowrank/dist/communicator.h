#pragma once
// Collective communication between the ranks of a data-parallel run: one rank per device, each
// calling from its own thread with its own tensors. Only the gradients of a LoRA (or --full) step
// travel, so one collective is enough: a sum over ranks, left in every rank's tensors.
#include <memory>
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int size() const = 0;
  // Every rank calls this with tensors of the same shapes and dtypes (f32 or f64), in the same
  // order, on its own device; on return (CUDA: once the rank's stream has run it) each holds the
  // elementwise sum over ranks. Throws Error naming the rank and the operation when another rank
  // failed (abort) or did not arrive within the timeout.
  virtual void all_reduce_sum_(int rank, std::vector<Tensor>& tensors) = 0;
  // A rank that failed calls this so that the others stop instead of waiting for it.
  virtual void abort(int rank, const std::string& why) = 0;
};

// One rank per device: all CPU → threads in this process summing in rank order (the reference,
// and CI's test of the data-parallel logic); all CUDA → NCCL (loaded at run time). Throws Error for
// a mix, repeated GPUs, or CUDA without a loadable NCCL.
std::unique_ptr<Communicator> make_communicator(const std::vector<Device>& devices);

// Seconds a rank waits for the others in a collective before it gives up (LOWRANK_DIST_TIMEOUT_S,
// default 600).
double collective_timeout_seconds();

}  // namespace lowrank::dist
