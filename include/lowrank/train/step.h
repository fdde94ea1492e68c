#pragma once
// One optimizer step: gradient accumulation over micro-batches (mean over every counted target of
// the step, as transformers does with num_items_in_batch), global-norm clipping, a finite check,
// and AdamW.
#include <vector>

#include "lowrank/lora/adapter.h"
#include "lowrank/model/backward.h"
#include "lowrank/train/dataset.h"
#include "lowrank/train/optimizer.h"

namespace lowrank::train {

// The trainable tensors of an adapter (A, B, biases) with their gradients.
std::vector<ParamRef> lora_params(lora::Adapter& adapter);
// Every weight of the model with the matching tensor of `grads` (zeros_like of the weights).
// A tied lm_head is listed once (as the embedding). Weights that are not f32 (bf16 on the GPU)
// get an f32 master copy as the trained tensor, with the weight itself as its working copy.
std::vector<ParamRef> full_params(model::Model& model, model::ModelWeights& grads);

struct StepResult {
  double loss = 0;        // mean NLL over the step's counted targets
  int64_t tokens = 0;     // counted targets
  double grad_norm = 0;   // before clipping
  bool skipped = false;   // gradients were not finite: nothing was updated
};

class StepGraph;
class GradientSum;

struct StepContext {
  const model::Model* model = nullptr;
  model::TrainableHook* hook = nullptr;   // LoRA
  model::ModelWeights* full_grads = nullptr;  // --full
  std::vector<ParamRef>* params = nullptr;
  AdamW* optimizer = nullptr;
  double max_grad_norm = 0;  // 0: no clipping
  bool checkpointing = false;  // recompute layer activations in backward (less memory)
  StepGraph* graph = nullptr;  // when set: forward and backward replayed as a CUDA graph (step_graph.h)
  // Data parallelism: the gradients and the NLL summed over the ranks during the backward
  // (gradient_sum.h); the host then waits on the communicator before apply_gradients.
  GradientSum* gradient_sum = nullptr;
};

StepResult train_step(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, double lr);

// train_step in two halves, for data parallelism (train/data_parallel.h) with a sum of the
// gradients over devices in between:
// zeroes the gradients, then runs forward and backward of every micro-batch, each loss scaled by
// 1/`counted` (the counted targets of the whole step, over every device); `nll` becomes the summed
// NLL (F64 [1] on the model's device). Nothing runs when `counted` is 0. Through ctx.graph when it
// can (the same gradients and NLL, bit for bit). With ctx.gradient_sum, gradients and NLL are
// also summed over the ranks (started during the last backward, joined at the end).
void accumulate_gradients(StepContext& ctx, const std::vector<MicroBatch>& micro_batches, int64_t counted,
                          Tensor& nll);
// forward_backward's layer_done for micro-batch k of a step: ctx.gradient_sum's for the last one
// (its gradients are final as the backward leaves each layer), none otherwise.
const model::LayerGradientsDone* last_layer_done(const StepContext& ctx, size_t k, size_t micro_batches);
// Given the whole step's gradients and NLL: gradient norm and clipping, the finite check, AdamW.
StepResult apply_gradients(StepContext& ctx, const Tensor& nll, int64_t counted, double lr);
int64_t counted_targets(const std::vector<MicroBatch>& micro_batches);
// Every parameter's gradient set to 0 (one multi-tensor launch; the parameters share a device).
void zero_gradients(const std::vector<ParamRef>& params);

}  // namespace lowrank::train
