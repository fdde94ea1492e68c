#pragma once
// Stored tensors with NaN or inf: a weight or adapter holding one makes every output it touches
// NaN (a silent wrong answer, or training steps skipped one after another), so loads refuse it.
#include <string>

#include "lowrank/core/tensor.h"

namespace lowrank::io {

// Throws Error("<file>: tensor \"<name>\" holds NaN|inf[ as <dtype>] (element i)") at the first
// non-finite element of `host` (a CPU tensor, f32, bf16 or f16; other dtypes hold no such value).
// `converted`: the values are the file's in another dtype (an f32 beyond bf16's range is inf there).
void check_finite(const Tensor& host, const std::string& file, const std::string& name, bool converted = false);

}  // namespace lowrank::io
