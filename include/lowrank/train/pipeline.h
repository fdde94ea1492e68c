#pragma once
// Pipeline parallelism for a base larger than one GPU: the model is split into stages of
// consecutive layers, one per device (model/placement.h), and a step runs a pipeline schedule
// (1F1B or GPipe, pipeline_schedule.h) over its micro-batches (--grad-accum). The host queues each
// op on its device's stream without waiting (activations and gradients cross devices with
// device_copy_async), so stage s works on micro-batch k while stage s + 1 works on k - 1; with S
// stages and M micro-batches the devices idle (S - 1)/(M + S - 1) of the step (the bubble).
//
// The math is one device's: the same ops on each micro-batch, gradients accumulated in the same
// micro-batch order, the NLL summed in the same order, dropout masks drawn in the same order (each
// micro-batch in flight has its own hook, which keeps its saved LoRA activations and mask offsets
// until its backward). On the CPU ("cpu,cpu") a pipelined step equals a one-device step exactly.
#include <functional>
#include <memory>
#include <vector>

#include "lowrank/train/pipeline_schedule.h"
#include "lowrank/train/step.h"

namespace lowrank::train {

// A fresh training hook (LoRA with the run's adapter and dropout stream) for one micro-batch.
using HookFactory = std::function<std::unique_ptr<model::TrainableHook>()>;

struct PipelineContext {
  // The split model (step->model->placement()), the parameters (each on its layer's device), the
  // optimizer, clipping and checkpointing; step->hook is not used (make_hook gives one per micro-batch).
  StepContext* step = nullptr;
  HookFactory make_hook;
  // 1F1B holds at most S - s micro-batches' activations on stage s, GPipe all M of them.
  PipelineSchedule schedule = PipelineSchedule::OneFOneB;
};

// Zeroes the gradients, then forward and backward of every micro-batch in the schedule's order, each loss
// scaled by 1/`counted`; `nll` becomes the summed NLL (F64 [1] on the last stage's device). Returns
// after every device has finished. LoRA only (no --full gradients).
void accumulate_gradients_pipelined(const PipelineContext& ctx, const std::vector<MicroBatch>& micro_batches,
                                    int64_t counted, Tensor& nll);

// One optimizer step: accumulate_gradients_pipelined, then the global gradient norm over every
// stage (clipping each stage's gradients by it) and AdamW (apply_gradients).
StepResult train_step_pipeline(const PipelineContext& ctx, const std::vector<MicroBatch>& micro_batches, double lr);

}  // namespace lowrank::train
