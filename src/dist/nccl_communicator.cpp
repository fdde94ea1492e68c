#include "nccl_communicator.h"

#include "lowrank/core/error.h"

#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/nccl.h"
#endif

namespace lowrank::dist {

#ifdef LOWRANK_WITH_CUDA
namespace {

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(const std::vector<int>& gpus)
      : size_(static_cast<int>(gpus.size())), group_(cuda::NcclGroup::create(gpus)) {}
  // One GPU of a multi-process run; the TCP group stays open for the run (rank 0's listener).
  NcclCommunicator(std::unique_ptr<TcpGroup> processes, int gpu) : size_(1), processes_(std::move(processes)) {
    std::vector<char> id = processes_->rank() == 0 ? cuda::NcclGroup::unique_id() : std::vector<char>(128);
    processes_->broadcast(id);
    group_ = cuda::NcclGroup::join(gpu, processes_->world_size(), processes_->rank(), id);
  }
  int size() const override { return size_; }
  void all_reduce_sum_(int rank, std::vector<Tensor>& tensors) override {
    start_all_reduce_sum_(rank, tensors);
    join_all_reduces(rank);
    wait(rank);
  }
  void start_all_reduce_sum_(int rank, std::vector<Tensor>& tensors) override {
    group_->start_all_reduce_sum_(rank, tensors);
  }
  void join_all_reduces(int rank) override { group_->join_all_reduces(rank); }
  // Waiting (the caller reads the gradient norm next anyway) is what lets a rank notice that
  // another one failed or never came, instead of hanging in NCCL's kernel.
  void wait(int rank) override { group_->wait(rank, collective_timeout_seconds(), "all-reduce"); }
  void abort(int rank, const std::string& why) override {
    group_->abort("rank " + std::to_string(rank) + " failed: " + why);
  }

 private:
  int size_;
  std::unique_ptr<TcpGroup> processes_;  // multi-process runs only
  std::unique_ptr<cuda::NcclGroup> group_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>& gpus) {
  return std::make_unique<NcclCommunicator>(gpus);
}

std::unique_ptr<Communicator> make_nccl_process_communicator(std::unique_ptr<TcpGroup> group, int gpu) {
  return std::make_unique<NcclCommunicator>(std::move(group), gpu);
}

#else

std::unique_ptr<Communicator> make_nccl_communicator(const std::vector<int>&) {
  throw error("multi-GPU training needs the CUDA backend, and this build has none");
}

std::unique_ptr<Communicator> make_nccl_process_communicator(std::unique_ptr<TcpGroup>, int) {
  throw error("multi-GPU training needs the CUDA backend, and this build has none");
}

#endif

}  // namespace lowrank::dist
