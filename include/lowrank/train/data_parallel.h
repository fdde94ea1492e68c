#pragma once
// Data parallelism: one model replica per device, each with its own copy of the trainable
// parameters and optimizer. A step gives each rank its shard of the step's sequences; the gradients
// (LoRA's, or with --full every weight's) and the NLL are summed over ranks; then every rank applies
// the same update, so the replicas stay identical. The losses equal one device's up to summation
// order: every rank scales its loss by the whole step's counted targets.
#include <vector>

#include "lowrank/dist/communicator.h"
#include "lowrank/train/step.h"

namespace lowrank::train {

// The step of this process's ranks (`ranks[r]`, `shards[r]`: local rank r's context, whose
// gradient_sum sums over `comm`, and micro-batches); `counted`: the labelled targets of the
// whole step over every rank of the run.
// Local rank 0 runs on the calling thread (the one the step profiler follows), the others on
// threads of their own. A rank that fails aborts the communicator, so the others stop too; the
// first error is rethrown here.
StepResult train_step_parallel(std::vector<StepContext*>& ranks, dist::Communicator& comm,
                               const std::vector<std::vector<MicroBatch>>& shards, int64_t counted, double lr);

// Rank r's rows of each micro-batch's example indices: a contiguous 1/ranks of every batch.
// Throws Error unless the batch size is a multiple of the number of ranks.
std::vector<std::vector<int64_t>> shard_indices(const std::vector<int64_t>& batch, int ranks);

}  // namespace lowrank::train
