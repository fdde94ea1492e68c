#pragma once
// Gradient norm, finiteness check and clipping over all trainable tensors at once, with
// torch.nn.utils.clip_grad_norm_'s rule (one global L2 norm, one scale factor for every grad).
#include <vector>

#include "lowrank/train/optimizer.h"  // ParamRef

namespace lowrank::train {

// The gradients of `params` (checked: defined, f32) grouped by device in first-seen order: one
// group unless the model is split over devices (then one per stage), for per-device launches.
std::vector<std::vector<Tensor>> grads_by_device(const std::vector<ParamRef>& params);

// sqrt of the sum of squares of every grad element, accumulated in double on the gradients'
// device (ops::sum_squares_: fixed blocks in a fixed order, so the thread count does not matter).
// Inf or NaN if any grad element is (a finite f32 cannot overflow a double sum of squares).
double global_grad_norm(const std::vector<ParamRef>& params);

// False if any grad element is NaN or +-Inf (the caller then skips the step).
bool all_finite(const std::vector<ParamRef>& params);

// total = global_grad_norm(params); coef = max_norm / (total + 1e-6); if coef < 1, every grad is
// multiplied by coef (in place). Returns total, the norm before clipping (what torch returns and
// what trainers log). A non-finite total leaves the grads untouched (torch would spread the
// NaN into every grad); check all_finite() or the returned value. Throws Error if max_norm is not
// a positive number (callers that allow "no clipping" simply do not call this).
double clip_grad_norm(std::vector<ParamRef>& params, double max_norm);

}  // namespace lowrank::train
