#pragma once
// NCCL for data-parallel training: a group of communicators, one per GPU this process drives
// (ncclCommInitAll for threads of one process, ncclCommInitRank for one GPU per process), each
// used by the thread that drives its GPU. libnccl.so.2 is loaded at run
// time (dlopen, as cuDNN is), so a build or a machine without NCCL only loses multi-GPU training.
// Only in LOWRANK_WITH_CUDA builds.
#include <memory>
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::cuda {

class NcclGroup {
 public:
  // Throws Error when NCCL cannot be loaded or initialised (naming the library and NCCL's message).
  static std::unique_ptr<NcclGroup> create(const std::vector<int>& devices);
  // One process's rank of a multi-process group: rank 0 makes the id (unique_id), every process
  // passes it to join with its GPU; the group then has one local rank, number 0.
  static std::vector<char> unique_id();
  static std::unique_ptr<NcclGroup> join(int device, int world_size, int rank, const std::vector<char>& id);
  virtual ~NcclGroup() = default;
  // `rank`: the local rank (0..GPUs of this process - 1). Enqueues an in-place sum over ranks of
  // every tensor (f32 or f64), as one grouped launch, on rank's communication stream, after what
  // rank's stream has queued so far; returns at once. Rank's stream does not wait for it until join.
  virtual void start_all_reduce_sum_(int rank, std::vector<Tensor>& tensors) = 0;
  // Rank's stream waits (on the device) for every sum started so far. Both may be recorded in a
  // CUDA graph.
  virtual void join_all_reduces(int rank) = 0;
  // Waits until rank's stream has run everything enqueued so far; throws Error naming the rank when
  // NCCL reports an error, the group was aborted, or `timeout_s` passes (then aborts the group).
  virtual void wait(int rank, double timeout_s, const char* what) = 0;
  // Aborts every communicator: ranks blocked in a collective return and throw.
  virtual void abort(const std::string& why) = 0;
};

}  // namespace lowrank::cuda
