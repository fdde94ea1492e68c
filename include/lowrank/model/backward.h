#pragma once
// The manual backward pass (llm.c style): from the loss through every layer, computing only what
// the trainable parameters need. LoRA (or any other trainable add-on) hooks each projection.
#include <functional>
#include <vector>

#include "lowrank/model/model.h"

namespace lowrank {
class Rng;
}

namespace lowrank::model {

// A ProjectionHook that also takes part in the backward pass.
class TrainableHook : public ProjectionHook {
 public:
  // dy: gradient of the projection output [N, out]; x: its input [N, in]. Accumulates own
  // parameter gradients, and the hook's contribution to the input gradient into *dx [N, in]:
  // added to it when `dx_holds`, else written (dx made). Returns whether *dx received it (a hook
  // may add nothing, or add for a group of projections at its last). The model calls it before
  // the frozen products dy·W, which its GEMMs then add to dx (beta = 1). dx null: nothing needs
  // the input gradient (the lowest trained layer).
  virtual bool on_projection_backward(int layer, Target target, const Linear& base, const Tensor& x,
                                      const Tensor& dy, Tensor* dx, bool dx_holds) = 0;
  // The input gradient of projections that read one extended input (ProjectionHook::extended_input;
  // `dys`: their targets and output gradients, in forward order), frozen products included, as
  // [N, d + R] whose first d columns are dx; or undefined: the hook has no such input here, and
  // on_projection_backward and the frozen GEMMs run as usual. Accumulates the hook's gradients.
  // `packed` (optional): the output gradients side by side in one [N, Σ out] tensor, in the order
  // of `dys` (whose tensors are then null): for the q, k, v the hook made as one product
  // (ProjectionHook::stacked_projection). Without `need_dx` (the lowest trained layer, packed
  // only) the frozen products are skipped: the hook's gradients alone, and the result is its
  // [N, R] columns without dx's.
  virtual Tensor extended_inputs_backward(int layer, const Tensor& x,
                                          const std::vector<std::pair<Target, const Tensor*>>& dys,
                                          const Tensor* packed = nullptr, bool need_dx = true) {
    return Tensor();
  }
  // A projection that writes the residual stream (o, down) whose output gradient the hook wants
  // beside columns of its own: a [rows of like, out + R] buffer whose first `out` columns the
  // model's norm backward fills with that gradient; or undefined (the gradient then comes as usual).
  // `like`: a tensor of the layer with the gradient's rows, dtype and device.
  virtual Tensor extended_output_grad(int layer, Target target, const Tensor& like) { return Tensor(); }
  // The input gradient of such a projection, frozen product included, from the buffer above with
  // its first `out` columns written (x: the projection's input [N, in]). Accumulates the hook's
  // gradients.
  virtual Tensor extended_output_backward(int layer, Target target, const Linear& base, const Tensor& x,
                                          const Tensor& dy_ext) {
    return Tensor();
  }
  // dx [n, d]: gradient of the embedding output for `ids` (called when lowest_trainable_layer() < 0).
  virtual void on_embedding_backward(const std::vector<int32_t>& ids, const Tensor& dx) {}
  // The lowest layer that has trainable parameters: backward stops below it (-1: the embedding).
  virtual int lowest_trainable_layer() const = 0;
  // Where the gradient of a trained whole copy of the embedding or the lm_head (PEFT's
  // modules_to_save; `target` Embed or LmHead) accumulates, or null when there is none.
  virtual Tensor* saved_module_grad(Target target) { return nullptr; }
  // Activation checkpointing recomputes a layer's forward inside backward: while replaying, the
  // hook must reproduce exactly what the first forward did (same dropout masks).
  virtual void set_replay(bool replay) {}
  // The forward pass about to run is checkpointed: its decoder layers will be replayed in backward,
  // so the hook keeps only what a replay needs to match (dropout draws), not its activations.
  virtual void set_checkpointed_forward(bool on) {}
  // Keep what the hook saves for backward in `cache` (its hook_state) from now on; null: in the
  // hook itself. forward_backward binds its cache for the pass.
  virtual void bind(ForwardCache* cache) {}
  // Whether a training pass draws random numbers (LoRA dropout's masks, from a counter-based Rng).
  virtual bool draws_randomness() const { return false; }
  // The Rng they come from (null when none). A pass recorded once as a CUDA graph and replayed must
  // draw new masks at every replay: while recording, the hook's draws add `delta` (I64 [1] on the
  // device) to their positions, and the graph's owner sets it before each replay to how far the Rng
  // has moved since the recording (then advances the Rng by the recorded pass's draws).
  virtual Rng* draw_rng() { return nullptr; }
  virtual void set_draw_delta(const Tensor& delta) {}
};

struct LossResult {
  double nll_sum = 0;   // Σ -log p over counted targets
  int64_t tokens = 0;   // counted targets
};

// A pass's targets and gradient scale already on the model's device, for a training step recorded as
// a CUDA graph (its inputs are fixed buffers refilled before each replay): targets I32 [B*T] and
// grad_scale F32 [1], read instead of the host targets and the grad_scale argument. Every chunk of
// rows is then computed, whether it has counted targets or not (the replays' targets differ).
struct DeviceTargets {
  Tensor targets, grad_scale;
};

// HF causal-LM targets from labels aligned with input_ids ([B*T], -100 = ignored): position t
// predicts labels[t + 1]; the last position of each row predicts nothing.
std::vector<int32_t> shift_labels(const std::vector<int32_t>& labels, int64_t batch, int64_t seq);

// Forward, loss and backward for one micro-batch. Gradients are d(grad_scale · Σ NLL): pass
// grad_scale = 1 / (targets counted over the whole accumulated batch) for transformers' mean.
// `full_grads`, when given, receives (accumulates) the gradient of every model weight; it must be
// shaped like the model's weights (see zeros_like).
// With `checkpointing`, only each layer's input is kept from the forward pass; every layer is
// recomputed just before its backward (less memory, one more forward of compute).
// `loss_sum`, when given (F64 [1] on the model's device), receives the NLL sum on the device and
// nll_sum stays 0: the step reads the loss once, after all micro-batches, instead of per call.
// With `device_targets` (and the batch's device_ids/device_pos) nothing is uploaded from the host.
// `layer_done`, when given, is called with each decoder layer's index once the backward has left
// that layer (top layer first): the layer's gradients (LoRA's, trained biases', --full's) are
// final for this pass, and data parallelism starts summing them while the layers below run.
using LayerGradientsDone = std::function<void(int64_t layer)>;
LossResult forward_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& targets,
                            float grad_scale, TrainableHook* hook, ModelWeights* full_grads = nullptr,
                            bool checkpointing = false, Tensor* loss_sum = nullptr,
                            const DeviceTargets* device_targets = nullptr,
                            const LayerGradientsDone* layer_done = nullptr);

// The pieces of forward_backward, for schedules that interleave micro-batches (the pipeline over a
// split model, train/pipeline.h). Each runs on the device of its part of the model.
//
// The loss of one micro-batch and d(hidden) [N, d]: the lm_head (with its LoRA) and the fused
// cross-entropy in row chunks. Gradients are d(grad_scale · Σ NLL); the NLL sum is added to
// `loss_sum` (F64 [1] on the hidden states' device) when given, else returned in `result`.
Tensor loss_backward(const Model& model, const Tensor& hidden, const std::vector<int32_t>& targets, float grad_scale,
                     TrainableHook* hook, ModelWeights* full, Tensor* loss_sum, LossResult& result,
                     const DeviceTargets* device_targets = nullptr);
// Backward through decoder layer `li` of a B×T batch: `dx` [N, d] is the gradient of its output;
// returns the gradient of its input (undefined when `need_dx` is false: nothing below needs it).
// `saved` holds the layer's activations or, with `checkpointing`, only its input: the forward is
// then replayed (the hook replays its dropout masks) and the recomputed activations freed after.
// pos_dev: the positions [N] on the layer's device; grads: the layer's --full gradients or null.
Tensor layer_backward(const Model& model, int64_t li, LayerActivations& saved, Tensor dx, int64_t B, int64_t T,
                      const Tensor& pos_dev, TrainableHook* hook, LayerWeights* grads, bool need_dx,
                      bool checkpointing);
// The embedding's part: dx [N, d] is the gradient of the first layer's input (scaled in place for
// Gemma); feeds the embedding LoRA (when the hook trains layer -1) or --full's embed/positions.
void embedding_backward(const Model& model, const TokenBatch& batch, const std::vector<int32_t>& pos, Tensor& dx,
                        TrainableHook* hook, ModelWeights* full, const Tensor& pos_dev = Tensor());

// f32 zero tensors shaped like every weight of `w` on its device (lm_head shares embed's when
// tied): the gradients of --full, f32 even for bf16 weights.
ModelWeights zeros_like(const ModelWeights& w);

}  // namespace lowrank::model
