#pragma once
// A data-parallel step's sum of gradients over the ranks, overlapped with the backward: each
// decoder layer's gradients (one bucket a layer: LoRA's A/B/biases of that layer, or with --full
// every weight of it) start summing as soon as the last micro-batch's backward has left the layer,
// while the layers below are still running; what only the end of the pass finishes (embedding,
// lm_head, final norm) and the NLL start last. The sums then run on the communicator's stream
// (NCCL) next to the backward; on the CPU they happen at once, layer by layer (the same math).
// LOWRANK_DIST_OVERLAP=0 starts every bucket after the backward instead (for measurements).
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "lowrank/dist/communicator.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/optimizer.h"

namespace lowrank::train {

class GradientSum {
 public:
  // `params`: this rank's trainable tensors; `layers`: the model's decoder layers.
  GradientSum(dist::Communicator& comm, int rank, const std::vector<ParamRef>& params, int64_t layers);
  GradientSum(const GradientSum&) = delete;
  GradientSum& operator=(const GradientSum&) = delete;

  // forward_backward's callback for the step's last micro-batch (null: nothing to start then):
  // starts the layer's bucket.
  const model::LayerGradientsDone* layer_done() const { return layer_done_ ? &layer_done_ : nullptr; }
  // After the last backward: starts every bucket not started yet and the NLL (F64 [1]), then
  // joins every sum into the rank's stream (queued; a CUDA graph may record all of it). The host
  // waits with Communicator::wait before it reads the sums.
  void finish(Tensor& nll);

 private:
  void start(std::vector<Tensor>& tensors);

  dist::Communicator& comm_;
  int rank_;
  std::map<int64_t, std::vector<Tensor>> layer_grads_;  // decoder layer -> its gradients
  std::vector<Tensor> end_grads_;                        // finished at the end of the pass
  std::set<int64_t> started_;                            // layers started in this step
  model::LayerGradientsDone layer_done_;
};

}  // namespace lowrank::train
