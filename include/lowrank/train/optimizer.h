#pragma once
// AdamW with torch.optim.AdamW's semantics (default: non-amsgrad, non-maximize, decoupled weight
// decay), on f32 tensors (CPU or GPU; bf16 working copies are refreshed from f32 masters). The update for every parameter at step t (1-based):
//
//   p  *= 1 - lr * weight_decay                     (skipped for ParamRef::decay == false)
//   m   = lerp(m, g, 1 - beta1)                     (= beta1 * m + (1 - beta1) * g)
//   v   = beta2 * v + (1 - beta2) * g * g
//   p  -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// Scalar factors are computed in double (torch computes them with Python floats) and rounded to
// f32 where torch's kernels round them; element math follows torch's op order, so results agree
// with torch's single-tensor CPU path to within an ulp or so (see optimizer.cpp).
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::train {

struct AdamWConfig {
  double lr = 2e-4;  // the default base lr; step() takes the scheduled lr explicitly
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// One trainable tensor and its gradient. `param` and `grad` share a shape, are f32 and on the
// CPU; `param` is updated in place (the caller's Tensor handle sees the new values).
struct ParamRef {
  std::string name;   // unique; keys the optimizer state ("<name>.exp_avg", ...)
  Tensor param;       // [any shape], f32 (the master copy when `working` is defined)
  Tensor grad;        // same shape as param, f32
  bool decay = true;  // false: no weight decay for this tensor (e.g. biases, if the caller wants)
  // The tensor the model computes with, when it is a lower-precision copy of `param` (bf16
  // weights of --full on the GPU): step() rounds the updated master into it.
  Tensor working;
  // The decoder layer whose backward finishes this gradient (data parallelism sums it as soon as
  // the backward has left that layer); outside 0..layers-1 (-1 for the embedding and the final
  // norm, the number of layers for an lm_head LoRA): finished only at the end of the pass.
  int layer = -1;
  // A second home of the working copy (undefined: none): the 2-D param's values also rounded into
  // columns [working_also_col, + its columns) of this bf16 tensor's first rows (LoRA's B inside the
  // K-extended frozen weight, src/lora/k_extension.h), by the same AdamW pass.
  Tensor working_also{};
  int64_t working_also_col = 0;
  // This tensor's learning rate is the scheduled one times this (> 0): LoRA+'s groups
  // (train/loraplus.h), as torch's param groups each with its own lr under one schedule.
  double lr_scale = 1.0;
};

// Rounds every master `param` into its `working` copy (after loading a checkpoint into masters).
void refresh_working_copies(std::vector<ParamRef>& params);

class AdamW {
 public:
  // Throws Error on an invalid config (lr < 0, betas outside [0, 1), eps < 0, weight_decay < 0),
  // naming the field, as torch's constructor does.
  explicit AdamW(AdamWConfig config = {});

  // One update of every parameter with learning rate `lr` times its lr_scale (`lr`: the schedule's
  // value; lr 0 still advances the moments and the step count, as torch does). State is created
  // (zeros) on the first step. The set of names must stay the same from step to step (torch
  // keeps one step count per tensor; we share one, which is only equivalent if no tensor joins
  // late or skips a step): a name that is new after the first step, a missing one, a duplicate,
  // a param/grad/state shape, dtype or device mismatch, or an lr_scale that is not a positive
  // number throws Error naming the parameter, before anything changes.
  void step(std::vector<ParamRef>& params, double lr);

  // Number of step() calls so far (torch's state["step"]); 0 before the first.
  int64_t steps() const { return steps_; }
  const AdamWConfig& config() const { return config_; }

  // Checks `params` against the current state without changing anything (the same checks step()
  // makes); lets a resumed run fail on a mismatched checkpoint before doing any work.
  void check_params(const std::vector<ParamRef>& params) const;

  // The moments for checkpoints, sorted by name: "<param>.exp_avg" and "<param>.exp_avg_sq",
  // each f32 with the parameter's shape. These are the live tensors (no copy): write them out
  // before the next step().
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;

  // Replaces the state with tensors saved by state_tensors() (copied; any float dtype is
  // converted to f32) and the step count saved with them. Throws Error, changing nothing, on a key
  // not ending in ".exp_avg"/".exp_avg_sq", a parameter with only one of the two, mismatched
  // shapes between them (naming the parameter and both shapes), a non-CPU tensor, or
  // steps < 0. Shapes against the parameters are checked by the next step() / check_params().
  void load_state(const std::map<std::string, Tensor>& tensors, int64_t steps);

 private:
  // The update of `params` (all of one lr) at step steps_; true when a working copy is left for
  // refresh_working_copies (the CPU's, or one the device pass does not write).
  bool update(const std::vector<ParamRef*>& params, double lr);

  struct Moments {
    Tensor exp_avg;     // [param shape] f32: first moment m
    Tensor exp_avg_sq;  // [param shape] f32: second moment v
  };

  AdamWConfig config_;
  int64_t steps_ = 0;
  std::map<std::string, Moments> state_;  // keyed by ParamRef::name
};

}  // namespace lowrank::train
