#include "lowrank/ops/side_work.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

#include "lowrank/ops/profile.h"
#ifdef LOWRANK_WITH_CUDA
#include "lowrank/backend/cuda/device.h"
#endif

namespace lowrank::ops {
namespace {

std::atomic<int> g_enabled{-1};  // -1: LOWRANK_SIDE_STREAM not read yet

bool configured_on() {
  int on = g_enabled.load();
  if (on < 0) {
    const char* v = std::getenv("LOWRANK_SIDE_STREAM");
    on = v && std::string_view(v) == "0" ? 0 : 1;
    g_enabled.store(on);
  }
  return on == 1;
}

}  // namespace

bool side_work_enabled(Device device) {
#ifdef LOWRANK_WITH_CUDA
  return device.is_cuda() && configured_on() && !profile::enabled();
#else
  (void)device;
  return false;
#endif
}

void set_side_work_enabled(bool on) { g_enabled.store(on ? 1 : 0); }

SideWork::SideWork(Device device, std::initializer_list<Tensor> keep, bool use) : device_(device) {
#ifdef LOWRANK_WITH_CUDA
  if (!use || !side_work_enabled(device)) return;
  cuda::begin_side_work(device);
  active_ = true;
  keep_ = keep;
#else
  (void)keep;
  (void)use;
#endif
}

SideWork::~SideWork() {
#ifdef LOWRANK_WITH_CUDA
  if (!active_) return;
  // A destructor must not throw: a CUDA error here (an event record) leaves the stream failed,
  // and the next op on the device reports it.
  try {
    cuda::end_side_work(device_, std::move(keep_));
  } catch (...) {
  }
#endif
}

uint64_t side_work_mark(Device device) {
#ifdef LOWRANK_WITH_CUDA
  if (device.is_cuda()) return cuda::side_work_mark(device);
#endif
  (void)device;
  return 0;
}

void join_side_work(Device device, uint64_t before) {
#ifdef LOWRANK_WITH_CUDA
  if (device.is_cuda()) cuda::join_side_work(device, before);
#endif
  (void)device;
  (void)before;
}

}  // namespace lowrank::ops
