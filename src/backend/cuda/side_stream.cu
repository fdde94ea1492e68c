// The side stream behind lowrank::ops::SideWork (lowrank/ops/side_work.h): fork and join by
// events (also inside a graph recording, where they become the graph's edges), and the memory the
// side work still reads held until its join.
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "allocator.h"
#include "common.cuh"
#include "context.h"
#include "lowrank/backend/cuda/device.h"

namespace lowrank::cuda {

thread_local int t_side_work_device = -1;

namespace {

struct Block {
  void* p;
  size_t size_class;
};

// One scope's side work: done when `done` has been reached on the side stream.
struct Entry {
  uint64_t id;
  cudaEvent_t done;
  std::vector<Tensor> keep;
  std::vector<Block> frees;
};

struct SideState {
  std::mutex mutex;
  cudaEvent_t fork = nullptr;
  std::deque<Entry> pending;        // in the side stream's order
  std::vector<cudaEvent_t> spare;   // joined entries' events, recorded again by later scopes
  std::vector<Block> open_frees;    // blocks freed inside the open scope
  uint64_t next_id = 0;
};

SideState& state(int device) {
  static auto* states = new std::deque<SideState>(64);  // leaked: the contexts are too
  LR_CHECK(device >= 0 && device < 64, "side work on device ", device);
  return (*states)[device];
}

cudaEvent_t new_event() {
  cudaEvent_t e;
  LR_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

}  // namespace

void begin_side_work(Device d) {
  LR_CHECK(t_side_work_device < 0, "side-work scopes do not nest");
  DeviceContext& main = context(d);
  DeviceContext& side = side_context(main);
  SideState& s = state(d.index);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.fork) s.fork = new_event();
  // The side stream starts after what the main stream has queued (the side ops' inputs).
  LR_CUDA(cudaEventRecord(s.fork, main.stream));
  LR_CUDA(cudaStreamWaitEvent(side.stream, s.fork, 0));
  t_side_work_device = d.index;
}

void end_side_work(Device d, std::vector<Tensor> keep) {
  LR_CHECK(t_side_work_device == d.index, "end_side_work without its begin");
  t_side_work_device = -1;  // first: the thread's ops go back to the main stream whatever follows
  DeviceContext& side = side_context(context(d));
  SideState& s = state(d.index);
  std::lock_guard<std::mutex> lock(s.mutex);
  Entry e{s.next_id++, nullptr, std::move(keep), std::move(s.open_frees)};
  s.open_frees.clear();
  if (s.spare.empty()) {
    e.done = new_event();
  } else {
    e.done = s.spare.back();
    s.spare.pop_back();
  }
  LR_CUDA(cudaEventRecord(e.done, side.stream));
  s.pending.push_back(std::move(e));
}

uint64_t side_work_mark(Device d) {
  SideState& s = state(d.index);
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.next_id;
}

void join_side_work(Device d, uint64_t before) {
  LR_CHECK(t_side_work_device != d.index, "join_side_work inside a side-work scope");
  SideState& s = state(d.index);
  std::vector<Entry> joined;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    while (!s.pending.empty() && s.pending.front().id < before) {
      joined.push_back(std::move(s.pending.front()));
      s.pending.pop_front();
    }
    if (joined.empty()) return;
    // The side stream runs in order: its last joined event covers the ones before.
    LR_CUDA(cudaStreamWaitEvent(context(d).stream, joined.back().done, 0));
    for (const Entry& e : joined) s.spare.push_back(e.done);
  }
  // Now in the main stream's order after the side work: kept tensors and blocks may be reused.
  for (Entry& e : joined) {
    e.keep.clear();
    for (const Block& b : e.frees) cached_free(d, b.p, b.size_class);
  }
}

void defer_side_free(Device d, void* p, size_t size_class) {
  SideState& s = state(d.index);
  std::lock_guard<std::mutex> lock(s.mutex);
  s.open_frees.push_back({p, size_class});
}

}  // namespace lowrank::cuda
