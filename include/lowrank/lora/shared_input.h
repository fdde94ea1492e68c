#pragma once
// Plain LoRA layers of one block that read the same input — q, k, v (the attention norm's output)
// and gate, up (the MLP norm's output) — computed as one group: the shrinks of all members are one
// GEMM that reads x once, h = x [A_1; A_2; ...]ᵀ; each member's expand reads its column block of h;
// the backward gathers g = [s_1 dy_1 B_1 | s_2 dy_2 B_2 | ...] and then takes every member's dA
// (gᵀx) and their summed input gradient (g [A_1; A_2; ...]) in one GEMM each. Same math as
// linear_lora.cpp, member by member, with x read 2 times instead of 2 × members times. Training
// forwards only (the hook stays stateless for inference, which may run on several threads).
// With LoRA dropout each member draws its own mask (as PEFT's per-layer dropout modules do), so
// each member's shrink is its own fused dropout shrink into its block of h and its backward its
// own (ops::dropout_shrink, into and out of column blocks of the wide input); with one mask for
// the input (LoraConfig::dropout_per_input) the members' shrinks are one dropout shrink over the
// stacked A and their backward one. Such groups exist only for the K-extension (k_extension.h),
// where they save the expands.
#include <vector>

#include "lowrank/lora/lora_pair.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::lora {

class Adapter;

// Which shared input a projection reads: 0 = attention input (q, k, v), 1 = MLP input (gate, up),
// -1 = a projection of its own.
int shared_input_of(Target t);
// The projections of a shared input, in the order forward computes them.
const std::vector<Target>& shared_input_targets(int group);

// The plain LoRA layers of `layer` that read shared input `group`, in shared_input_targets order;
// empty unless there are two or more and all are plain LoRA (DoRA needs each layer's weight norm).
std::vector<LoraPair*> shared_input_members(Adapter& adapter, int layer, int group);

// Makes each group's A working copies (dtype) and A gradients (f32) row blocks of one stacked
// tensor (LoraPair::stacked_A_work / stacked_grad_A), so that the group's GEMMs read and accumulate
// them in place; values and gradients are kept.
void stack_shared_input_tensors(Adapter& adapter, bool working, bool grads);

// Whether members' `field` tensors are, in order, the row blocks of `stacked`.
bool stacked_in(const std::vector<LoraPair*>& members, Tensor LoraPair::*field, const Tensor& stacked);

struct SharedInputGroup {
  struct Member {
    Target target;
    LoraPair* pair;
    int64_t col = 0;   // first column of its block of h and g (= its first row of A); on the GPU
                       // blocks are padded to ranks of multiples of 8 (src/lora/rank_padding.h)
    float scale = 1;   // s · the user's adapter scale
    Tensor B;          // [out, r or padded r] in the activations' dtype, as the forward used it
    ops::DropoutDraws draws;  // p > 0: LoRA dropout, this member's own mask (its draws' offset)
  };
  std::vector<Member> members;
  Tensor A;                      // [R, in] the members' A stacked (activations' dtype), R = Σ (padded) r
  Tensor h;                      // [N, R] x Aᵀ: columns [h_col, h_col + R) of this tensor
  int64_t h_col = 0;             // 0, or `in` when h lives in x_ext
  float h_scale = 1;             // what h is already multiplied by (the members' s in x_ext)
  Tensor g;                      // [N, R] while the backward gathers the members' s · dy B
  // LoRA's K-extension (k_extension.h): x_ext [N, in + R], the input with s·h beside it (the
  // model's x itself, made wide by LoraHook::extended_input), when the members' W_ext apply.
  Tensor x_ext;
  const void* x_data = nullptr;  // the input h was computed from
  bool trained = false;          // built by a training forward: the backward uses it
  bool one_mask = false;         // dropout: the members' draws are one mask (dropout_per_input)
  unsigned forward_done = 0, backward_done = 0;  // members' bits

  int index_of(Target t) const;
  // Member i's columns of h and g (its rank, padded as the group stacks them).
  int64_t width(int i) const;
  bool dropped() const { return !members.empty() && members[0].draws.p > 0; }
  unsigned all_members() const { return (1u << members.size()) - 1; }
  // h = x Aᵀ for a new input (A and the members' B set; x may be wider than A: its first columns
  // are the input); with x_ext defined, s·h into its last R columns.
  void shrink(const Tensor& x);
  // y += s · h_i B_iᵀ for member i; with `first`, y = s · h_i B_iᵀ (a new tensor). With x_ext and
  // `first`, y = x_ext W_ext_iᵀ, the frozen product included: returns true then.
  bool expand(int i, Tensor& y, bool first) const;
  // Member i's dB from dy [N, out], and its block of g. After the last member: dA of every member
  // (x: the forward's input, possibly wide as in shrink)
  // and, when dx is given, the members' summed input gradient g A added to it (`dx_holds`) or
  // written. Returns whether dx received it.
  bool backward(int i, const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_holds);
  // The whole backward of a K-extended group (x_ext defined), dys[i] the members' output
  // gradients: dx_ext = Σ dy_i W_ext_i = [Σ dy_i W_i | g], g's block i = dy_i B_i (the other
  // members' zero blocks add nothing), then every dB, dA = s gᵀ x and dx += s g A into its first
  // `in` columns. Returns dx_ext [N, in + R]. With `packed` (q, k, v's gradients side by side, the
  // dys column blocks of it) the frozen products are one GEMM over the members' W_ext_stacked,
  // a frozen k's product included. Without need_dx (packed only: the lowest trained layer) no
  // frozen product: g = the packed gradients times the stack's B columns [N, R] (returned), then
  // every dB and dA.
  Tensor extended_backward(const Tensor& x, const std::vector<ops::ColumnBlock>& dys, const Tensor* packed = nullptr,
                           bool need_dx = true);

 private:
  void member_dB(int i, const ops::ColumnBlock& dy) const;  // on the side stream
  // With dropout, each member's dA and its masked share of dx from g (columns of g.t from g.col, as
  // h's), alpha · g the gradient of h (one mask: one backward over the stacked A); the dAs on the
  // side stream where one runs; the first share is added to dx only when dx_holds.
  void members_dropout_backward(const Tensor& x, const ops::ColumnBlock& g, float alpha, const ops::ColumnBlock* dx,
                                bool dx_holds);
  void finish_backward();                         // drops the activations, ready for a new forward
};

}  // namespace lowrank::lora
