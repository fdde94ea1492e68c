#pragma once
// Collective communication between the ranks of a data-parallel run: one rank per device, each
// calling from its own thread with its own tensors. Only the gradients of a LoRA (or --full) step
// travel, so one collective is enough: a sum over ranks, left in every rank's tensors.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::dist {

// The ranks this process drives (threads, one per device; one rank when each process of a
// multi-process run drives one device) are numbered 0..size()-1 here; the sum runs over every
// rank of the run, in this process or others.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int size() const = 0;  // ranks in this process
  // Every rank calls this with tensors of the same shapes and dtypes (f32 or f64), in the same
  // order, on its own device; on return (CUDA: once the rank's stream has run it) each holds the
  // elementwise sum over all ranks. Throws Error naming the rank and the operation when another rank
  // failed (abort) or did not arrive within the timeout.
  virtual void all_reduce_sum_(int rank, std::vector<Tensor>& tensors) = 0;
  // The same sum in three steps, so that it overlaps the backward of the layers below. `start`
  // queues it: CUDA ranks on a communication stream that first waits for what the rank's stream
  // has queued so far (the rank's later ops run meanwhile, on other tensors); CPU ranks sum at
  // once. `join_all_reduces` makes the rank's later ops wait for every started sum (queued, so a
  // CUDA graph can record start and join); `wait` blocks the host until the rank's queued work has
  // run, and throws as all_reduce_sum_ does. Every rank starts the same sums in the same order.
  virtual void start_all_reduce_sum_(int rank, std::vector<Tensor>& tensors) { all_reduce_sum_(rank, tensors); }
  virtual void join_all_reduces(int rank) {}
  virtual void wait(int rank) {}
  // A rank that failed calls this so that the others stop instead of waiting for it.
  virtual void abort(int rank, const std::string& why) = 0;
};

// One rank per device: all CPU → threads in this process summing in rank order (the reference,
// and CI's test of the data-parallel logic); all CUDA → NCCL (loaded at run time). Throws Error for
// a mix, repeated GPUs, or CUDA without a loadable NCCL.
std::unique_ptr<Communicator> make_communicator(const std::vector<Device>& devices);

// A multi-process run with torchrun's conventions (one device per process): RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
struct LaunchEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};
// The launch environment when WORLD_SIZE > 1 is set; nullopt otherwise. Error when it is
// malformed (a rank outside 0..WORLD_SIZE-1, a port that is not a number, ...). Under torchrun
// (TORCHELASTIC_USE_AGENT_STORE=True: its agent already listens on MASTER_PORT) the processes
// meet on MASTER_PORT + 1.
std::optional<LaunchEnv> launch_env_from_environment();
// This process's rank of a multi-process run on `device`: the processes meet at
// MASTER_ADDR:MASTER_PORT (rank 0 listens); CPU ranks then sum over TCP (rank 0 adds in rank
// order), CUDA ranks through NCCL (its unique id travels over the same TCP connections).
std::unique_ptr<Communicator> make_process_communicator(const LaunchEnv& env, Device device);

// Seconds a rank waits for the others in a collective before it gives up (LOWRANK_DIST_TIMEOUT_S,
// default 600).
double collective_timeout_seconds();

}  // namespace lowrank::dist
