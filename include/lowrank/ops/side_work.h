#pragma once
// Side work: ops off a step's critical path, queued on a second stream of the device so that they
// run alongside what the main stream queues after them. Used for LoRA's weight gradients in the
// backward (dB = s·dyᵀh, dA = s·gᵀx): nothing later in the step reads them until the optimizer, and
// as skinny GEMMs they leave most of the GPU idle, so they fill the gaps between and beside the
// main stream's kernels (the frozen input-gradient GEMMs, attention, norms). Same ops, same
// results bit for bit: only when they run changes.
//
// A SideWork scope forks: its ops start after everything the main stream queued before it. join()
// makes the main stream wait for side work queued before a mark. Between the two, the main stream
// may free or reuse memory the side ops still read: the scope's `keep` tensors, and every block
// freed while the scope is open, stay allocated until that work is joined. The caller joins before
// anything reads what the side work wrote, and before a graph recording ends (a recording must
// come back to one stream). Scopes of a thread do not nest; each device has one side stream.
//
// On the CPU, with LOWRANK_SIDE_STREAM=0, or while the step profiler is on (its markers time one
// stream), a scope does nothing and its ops run in order on the main stream.
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::ops {

class SideWork {
 public:
  // `use`: false runs the ops in order on the main stream (callers that cannot promise their
  // inputs stay unchanged in place until the join).
  SideWork(Device device, std::initializer_list<Tensor> keep, bool use = true);
  ~SideWork();
  SideWork(const SideWork&) = delete;
  SideWork& operator=(const SideWork&) = delete;

 private:
  Device device_;
  bool active_ = false;
  std::vector<Tensor> keep_;
};

// Whether SideWork scopes on `device` use a side stream now.
bool side_work_enabled(Device device);
// Tests: turns side streams off (false) or back to the default (true).
void set_side_work_enabled(bool on);

// A point in `device`'s side work: join_side_work(device, mark) joins what was queued before it.
uint64_t side_work_mark(Device device);
// The main stream waits (on the device) for the side work queued before `before` (default: all of
// it); then its kept tensors and deferred blocks are released.
void join_side_work(Device device, uint64_t before = UINT64_MAX);

}  // namespace lowrank::ops
