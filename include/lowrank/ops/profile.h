#pragma once
// The built-in step profiler (LOWRANK_PROFILE=1): device time of a training step by op category.
//
// Every op that goes through lowrank::ops is timed under the category of its name (a GEMM
// forward, a norm, attention ...). Callers that know better open a *sticky* scope: everything
// inside a LoRA hook counts as LoRA, everything inside the loss block as loss (the lm_head GEMMs
// too), everything inside the optimizer as optimizer. Time is cut at category changes only:
// a marker (a CUDA event on the device's stream, a host clock on the CPU) is recorded when the
// category changes, and the time between two markers goes to the category of the first.
// Device time therefore includes the idle gaps while the GPU waited for the host inside that
// category; the host column shows how long the host spent enqueueing it. Work outside any op
// (clones, zero fills, copies made by Tensor methods) is "other".
//
// Markers are recorded only between begin_step() and end_step(), so scopes cost one branch
// when the profiler is idle. LOWRANK_PROFILE=ops also records a marker at every op's start and
// end and adds a table of the costliest ops (category, op name, time, calls): finer, and slower.
#include <string>

#include "lowrank/core/tensor.h"

namespace lowrank::profile {

enum class Category {
  Other,
  GemmForward,      // x Wᵀ of the frozen projections
  GemmInputGrad,    // dy W
  GemmWeightGrad,   // dyᵀ x (full fine-tuning only)
  Lora,             // everything inside the LoRA hook (shrink, expand, dropout, A/B grads)
  AttentionForward,
  AttentionBackward,
  Norm,             // RMSNorm / LayerNorm, forward and backward
  Rope,
  Activation,       // SwiGLU, GELU ..., forward and backward
  Elementwise,      // residual adds, bias, casts, copies, fills, scales
  Embedding,
  Loss,             // lm_head GEMMs + cross-entropy
  Optimizer,        // grad zeroing, norm, clipping, AdamW
  Dequantize,       // NF4 weights dequantized before their GEMMs (--quantize nf4)
  kCount
};

const char* category_name(Category c);
// The category of an op of lowrank::ops by its name ("matmul_nt", "rmsnorm_backward" ...).
Category category_of_op(const char* name);

// LOWRANK_PROFILE=1 (or =ops) in the environment (read once), or set_enabled().
bool enabled();
void set_enabled(bool on, bool per_op = false);

// Collects one step's markers on `device`: begin_step() before the step's first op, end_step()
// after its last (end_step waits for the device and adds the step's times to the totals).
void begin_step(Device device);
void end_step();
bool collecting();

// Per-step averages over the collected steps, one row per category with time, as a table.
std::string report();
void reset();

// RAII category scope. A sticky scope claims every op inside it; a plain one applies only when
// no sticky scope is open.
class Scope {
 public:
  explicit Scope(Category c, bool sticky = false);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool active_ = false;
  Category saved_ = Category::Other;
  bool saved_sticky_ = false;
};

// The scope the op dispatch opens around every op: its category from the op's name.
class OpScope {
 public:
  explicit OpScope(const char* call_text);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  bool active_ = false;
  Category saved_ = Category::Other;
  const char* saved_op_ = nullptr;
};

}  // namespace lowrank::profile
