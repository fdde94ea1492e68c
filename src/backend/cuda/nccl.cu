// NcclGroup over libnccl.so.2, resolved with dlopen (the box has it in the CUDA toolkit or the
// pip wheel nvidia-nccl-cu13; scripts/device-env.sh puts the wheel's folder on the library path).
#include "lowrank/backend/cuda/nccl.h"

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "common.cuh"
#include "context.h"
#include "lowrank/core/error.h"
#include "lowrank/core/log.h"

#if __has_include(<nccl.h>)
#include <nccl.h>
#define LOWRANK_NCCL_HEADERS 1
#else
#define LOWRANK_NCCL_HEADERS 0
#endif

namespace lowrank::cuda {

#if LOWRANK_NCCL_HEADERS
namespace {

struct Api {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclCommInitAll) init_all = nullptr;
  decltype(&ncclCommInitRank) init_rank = nullptr;
  decltype(&ncclGetUniqueId) unique_id = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
  decltype(&ncclCommGetAsyncError) async_error = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
};

const Api& api() {
  static const Api* loaded = [] {
    void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      throw error("multi-GPU training needs NCCL: cannot load libnccl.so.2 (", e ? e : "not found",
                  "); put its folder on LD_LIBRARY_PATH");
    }
    auto* a = new Api;  // leaked on purpose: used until exit
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
    };
    sym(a->get_version, "ncclGetVersion");
    sym(a->init_all, "ncclCommInitAll");
    sym(a->init_rank, "ncclCommInitRank");
    sym(a->unique_id, "ncclGetUniqueId");
    sym(a->destroy, "ncclCommDestroy");
    sym(a->abort, "ncclCommAbort");
    sym(a->async_error, "ncclCommGetAsyncError");
    sym(a->error_string, "ncclGetErrorString");
    sym(a->all_reduce, "ncclAllReduce");
    sym(a->group_start, "ncclGroupStart");
    sym(a->group_end, "ncclGroupEnd");
    if (!missing.empty()) throw error("libnccl lacks ", missing);
    int version = 0;
    a->get_version(&version);
    log_info("NCCL ", version / 10000, ".", version / 100 % 100, ".", version % 100, " loaded");
    return a;
  }();
  return *loaded;
}

void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw error("NCCL ", what, " failed: ", api().error_string(r));
}

class Group final : public NcclGroup {
 public:
  // Every GPU of the group in this process.
  explicit Group(const std::vector<int>& devices) : devices_(devices), comms_(devices.size()), ranks_(devices.size()) {
    nccl_check(api().init_all(comms_.data(), static_cast<int>(devices.size()), devices.data()), "ncclCommInitAll");
    make_streams();
  }
  // This process's one GPU of a multi-process group.
  Group(int device, int world_size, int rank, const ncclUniqueId& id) : devices_{device}, comms_(1), ranks_(1) {
    context(Device::cuda(device));
    nccl_check(api().init_rank(&comms_[0], world_size, id, rank), "ncclCommInitRank");
    make_streams();
  }
  ~Group() override {
    for (size_t r = 0; r < comms_.size(); ++r) {
      context(Device::cuda(devices_[r]));
      if (aborted_) api().abort(comms_[r]);
      else api().destroy(comms_[r]);
      const RankStreams& s = ranks_[r];
      cudaEventDestroy(s.queued);
      cudaEventDestroy(s.summed);
      cudaEventDestroy(s.done);
      cudaStreamDestroy(s.comm);
    }
  }

  void start_all_reduce_sum_(int rank, std::vector<Tensor>& tensors) override {
    DeviceContext& ctx = context(Device::cuda(devices_.at(rank)));
    RankStreams& s = ranks_[rank];
    // The communication stream starts after what the rank has queued (the gradients' last writes).
    LR_CUDA(cudaEventRecord(s.queued, ctx.stream));
    LR_CUDA(cudaStreamWaitEvent(s.comm, s.queued, 0));
    nccl_check(api().group_start(), "ncclGroupStart");
    for (Tensor& t : tensors) {
      LR_CHECK(t.device() == Device::cuda(devices_[rank]), "rank ", rank, " all-reduce of ", t.str());
      LR_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "all-reduce of ", t.str(), ": f32 or f64 only");
      const ncclDataType_t type = t.dtype() == DType::F32 ? ncclFloat32 : ncclFloat64;
      nccl_check(api().all_reduce(t.raw(), t.raw(), static_cast<size_t>(t.numel()), type, ncclSum, comms_[rank],
                                  s.comm),
                 "ncclAllReduce");
    }
    nccl_check(api().group_end(), "ncclGroupEnd");
  }

  void join_all_reduces(int rank) override {
    DeviceContext& ctx = context(Device::cuda(devices_.at(rank)));
    RankStreams& s = ranks_[rank];
    LR_CUDA(cudaEventRecord(s.summed, s.comm));
    LR_CUDA(cudaStreamWaitEvent(ctx.stream, s.summed, 0));
  }

  void wait(int rank, double timeout_s, const char* what) override {
    DeviceContext& ctx = context(Device::cuda(devices_.at(rank)));
    cudaEvent_t done = ranks_[rank].done;
    LR_CUDA(cudaEventRecord(done, ctx.stream));
    const auto start = std::chrono::steady_clock::now();
    while (true) {
      const cudaError_t q = cudaEventQuery(done);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) LR_CUDA(q);
      ncclResult_t async = ncclSuccess;
      api().async_error(comms_[rank], &async);
      if (async != ncclSuccess && async != ncclInProgress)
        throw error("rank ", rank, ": ", what, ": NCCL reported ", api().error_string(async));
      if (aborted_) throw error("rank ", rank, ": ", what, " stopped: ", reason());
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s) {
        abort("rank " + std::to_string(rank) + " waited more than " + std::to_string(static_cast<int>(timeout_s)) +
              " s in " + what + " (another rank did not take part)");
        throw error("rank ", rank, ": ", what, " did not finish within ", static_cast<int>(timeout_s),
                    " s: another rank did not take part (LOWRANK_DIST_TIMEOUT_S)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  void abort(const std::string& why) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_) return;
    reason_ = why;
    aborted_ = true;  // the communicators are aborted in the destructor, once no rank uses them
  }

 private:
  // A rank's communication stream and its events: `queued` (the rank's stream up to a start),
  // `summed` (the communication stream up to a join), `done` (the rank's stream up to a wait).
  struct RankStreams {
    cudaStream_t comm = nullptr;
    cudaEvent_t queued = nullptr, summed = nullptr, done = nullptr;
  };
  void make_streams() {
    for (size_t r = 0; r < devices_.size(); ++r) {
      context(Device::cuda(devices_[r]));
      RankStreams& s = ranks_[r];
      int lowest = 0, highest = 0;  // high priority: the sums' few blocks go ahead of the backward's
      LR_CUDA(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
      LR_CUDA(cudaStreamCreateWithPriority(&s.comm, cudaStreamNonBlocking, highest));
      for (cudaEvent_t* e : {&s.queued, &s.summed, &s.done})
        LR_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
  }
  std::string reason() {
    std::lock_guard<std::mutex> lock(mutex_);
    return reason_;
  }
  std::vector<int> devices_;
  std::vector<ncclComm_t> comms_;   // [rank]
  std::vector<RankStreams> ranks_;  // [rank]
  std::atomic<bool> aborted_{false};
  std::mutex mutex_;
  std::string reason_;
};

}  // namespace

std::unique_ptr<NcclGroup> NcclGroup::create(const std::vector<int>& devices) {
  return std::make_unique<Group>(devices);
}

std::vector<char> NcclGroup::unique_id() {
  ncclUniqueId id;
  nccl_check(api().unique_id(&id), "ncclGetUniqueId");
  return std::vector<char>(id.internal, id.internal + sizeof id.internal);
}

std::unique_ptr<NcclGroup> NcclGroup::join(int device, int world_size, int rank, const std::vector<char>& bytes) {
  ncclUniqueId id;
  LR_CHECK(bytes.size() == sizeof id.internal, "NCCL unique id of ", bytes.size(), " bytes");
  std::memcpy(id.internal, bytes.data(), sizeof id.internal);
  return std::make_unique<Group>(device, world_size, rank, id);
}

#else

std::unique_ptr<NcclGroup> NcclGroup::create(const std::vector<int>&) {
  throw error("multi-GPU training needs NCCL, and this build had no nccl.h");
}
std::vector<char> NcclGroup::unique_id() { throw error("multi-GPU training needs NCCL, and this build had no nccl.h"); }
std::unique_ptr<NcclGroup> NcclGroup::join(int, int, int, const std::vector<char>&) {
  throw error("multi-GPU training needs NCCL, and this build had no nccl.h");
}

#endif

}  // namespace lowrank::cuda
