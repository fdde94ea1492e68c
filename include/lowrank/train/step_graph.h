#pragma once
// A training step's forward and backward passes (accumulate_gradients) recorded once as a CUDA
// graph and replayed for every later step of the same shapes: the ~2,000 kernel launches of a
// small model's step become one, and the GPU no longer idles between them.
//
// The passes read their inputs from fixed device buffers that are refilled before each replay:
// token ids, positions, targets and the gradient scale (1 / the step's counted targets). The
// host still checks every id and target before a replay, so a bad one is the same clear error as
// without the graph. The first step of new shapes runs op by op (GEMM autotuning and attention
// plans happen there), the second is recorded; a change of shapes drops the graph and its memory.
//
// LoRA dropout: the recorded kernels draw their masks at the recorded positions of the hook's Rng
// plus a device scalar set before each replay to how far the Rng has moved since, and the Rng is
// advanced by the recorded step's draws: the masks are those of the same steps run op by op.
//
// Not used (the step runs op by op): on the CPU, for the steps the profiler times
// (LOWRANK_PROFILE), for a model split over devices, when the recording fails (an op that needs the
// host; logged once), or with LOWRANK_STEP_GRAPH=0.
#include <memory>
#include <utility>
#include <vector>

#include "lowrank/core/device_graph.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/dataset.h"

namespace lowrank {
class Rng;
}

namespace lowrank::train {

struct StepContext;

class StepGraph {
 public:
  explicit StepGraph(Device device);
  // Whether graphs can be used on `device` at all (CUDA, LOWRANK_STEP_GRAPH not 0).
  static bool enabled(Device device);

  // accumulate_gradients (step.h) through the graph, the gradients zeroed first; `nll` becomes the
  // summed NLL (F64 [1] on the device). False when the step must run op by op instead (nothing
  // was queued then).
  bool accumulate(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, int64_t counted, Tensor& nll);

  int64_t replays() const { return replays_; }
  bool recorded() const { return graph_ != nullptr; }

 private:
  using Shapes = std::vector<std::pair<int64_t, int64_t>>;  // (batch, seq) of each micro-batch
  void reset();
  void fill_inputs(const std::vector<MicroBatch>& micro_batches, int64_t counted, int64_t vocab, int64_t classes);
  bool record(StepContext& ctx, const std::vector<MicroBatch>& micro_batches);

  Device device_;
  Shapes shapes_;
  bool warmed_ = false;  // a step of these shapes ran op by op
  bool failed_ = false;  // recording these shapes failed: op by op until they change
  std::shared_ptr<DeviceGraphPool> pool_;
  std::unique_ptr<DeviceGraph> graph_;
  // Inputs, allocated before the recording: ids then targets of every micro-batch (I32), each
  // micro-batch's positions (I32), the gradient scale (F32 [1]); the NLL sum (F64 [1]).
  Tensor tokens_, positions_, grad_scale_, nll_;
  // Dropout: the hook's Rng, its position when the recording began, the recorded step's draws, and
  // the shift of the draws' positions at a replay (I64 [1]).
  Rng* rng_ = nullptr;
  uint64_t recorded_at_ = 0, draws_ = 0;
  Tensor draw_delta_;
  std::vector<model::TokenBatch> batches_;
  std::vector<model::DeviceTargets> targets_;
  int64_t replays_ = 0;
};

}  // namespace lowrank::train
