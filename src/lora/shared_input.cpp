#include "lowrank/lora/shared_input.h"

#include <algorithm>

#include "lowrank/lora/adapter.h"
#include "lowrank/lora/rank_padding.h"
#include "lowrank/ops/ops.h"
#include "lowrank/ops/side_work.h"

namespace lowrank::lora {

using ops::ColumnBlock;
using ops::Gemm;

int shared_input_of(Target t) {
  switch (t) {
    case Target::Q: case Target::K: case Target::V: return 0;
    case Target::Gate: case Target::Up: return 1;
    default: return -1;
  }
}

const std::vector<Target>& shared_input_targets(int group) {
  static const std::vector<Target> attention{Target::Q, Target::K, Target::V}, mlp{Target::Gate, Target::Up};
  return group == 0 ? attention : mlp;
}

std::vector<LoraPair*> shared_input_members(Adapter& adapter, int layer, int group) {
  std::vector<LoraPair*> members;
  for (Target t : shared_input_targets(group)) {
    LoraPair* p = adapter.find(layer, t);
    if (!p) continue;
    if (p->kind != VariantKind::Linear) return {};
    members.push_back(p);
  }
  if (members.size() < 2) members.clear();
  return members;
}

namespace {
// Moves each member's `field` into row blocks of one new stacked tensor (dtype of the first), a
// block every compute_rank rows (rank_padding.h: zero rows between blocks on the GPU).
void stack_rows(const std::vector<LoraPair*>& members, Tensor LoraPair::*field, Tensor LoraPair::*stacked) {
  const Tensor& first = members[0]->*field;
  if (!first.defined()) return;
  int64_t rows = 0;
  for (LoraPair* p : members) rows += compute_rank(p->r, first.device());
  Tensor all = Tensor::zeros({rows, first.dim(1)}, first.dtype(), first.device());
  int64_t row = 0;
  for (LoraPair* p : members) {
    Tensor block = all.slice_rows(row, row + (p->*field).dim(0));
    ops::cast_into_(block, p->*field);
    p->*field = block;
    p->*stacked = all;
    row += compute_rank(p->r, first.device());
  }
}
}  // namespace

bool stacked_in(const std::vector<LoraPair*>& members, Tensor LoraPair::*field, const Tensor& stacked) {
  if (!stacked.defined()) return false;
  int64_t row = 0;
  for (const LoraPair* p : members) {
    const Tensor& t = p->*field;
    if (!t.defined() || row + t.dim(0) > stacked.dim(0) || t.raw() != stacked.slice_rows(row, row + t.dim(0)).raw())
      return false;
    row += compute_rank(p->r, stacked.device());
  }
  return row == stacked.dim(0);
}

void stack_shared_input_tensors(Adapter& adapter, bool working, bool grads) {
  std::vector<std::pair<int, int>> groups;  // (layer, shared input) with members, once each
  for (const LoraPair& p : adapter.pairs) {
    const std::pair<int, int> g{p.layer, shared_input_of(p.target)};
    if (g.second >= 0 && std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  for (auto [layer, group] : groups) {
    const std::vector<LoraPair*> members = shared_input_members(adapter, layer, group);
    if (members.empty()) continue;
    if (working) stack_rows(members, &LoraPair::A_work, &LoraPair::stacked_A_work);
    if (grads) stack_rows(members, &LoraPair::grad_A, &LoraPair::stacked_grad_A);
  }
}

int SharedInputGroup::index_of(Target t) const {
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i].target == t) return static_cast<int>(i);
  return -1;
}

int64_t SharedInputGroup::width(int i) const {
  return (static_cast<size_t>(i) + 1 < members.size() ? members[i + 1].col : A.dim(0)) - members[i].col;
}

void SharedInputGroup::shrink(const Tensor& x) {
  const ColumnBlock input{x, 0, A.dim(1)};
  if (x_ext.defined()) {  // s·h beside x: every member's expand is then its frozen GEMM's K
    h = x_ext;
    h_col = A.dim(1);
    h_scale = members[0].scale;  // one s for the group (k_extension.h)
  } else {
    h = Tensor::empty({x.dim(0), A.dim(0)}, x.dtype(), x.device());
    h_col = 0;
    h_scale = 1;
  }
  if (dropped()) {  // each member through its own mask into its block of x_ext, or all through one
    LR_CHECK(x_ext.defined(), "LoRA group with dropout outside its K-extension");
    if (one_mask) ops::dropout_shrink(input, members[0].draws, A, {h, h_col, A.dim(0)}, h_scale);
    for (size_t i = 0; i < members.size() && !one_mask; ++i) {
      const Member& m = members[i];
      const int64_t w = width(static_cast<int>(i));
      ops::dropout_shrink(input, m.draws, A.slice_rows(m.col, m.col + w), {h, h_col + m.col, w}, h_scale);
    }
  } else {
    ops::matmul_blocks(Gemm::NT, input, ColumnBlock::all(A), {h, h_col, A.dim(0)}, h_scale, 0.0f);  // [N, R]
  }
  x_data = x.raw();
  forward_done = 0;
}

bool SharedInputGroup::expand(int i, Tensor& y, bool first) const {
  const Member& m = members[i];
  if (first && x_ext.defined()) {  // y = [x | s·h] [W | 0 … B_i … 0]ᵀ
    y = Tensor::empty({h.dim(0), m.pair->W_ext.dim(0)}, h.dtype(), h.device());
    ops::matmul_nt(x_ext, m.pair->W_ext, y);
    return true;
  }
  if (first) y = Tensor::empty({h.dim(0), m.B.dim(0)}, h.dtype(), h.device());
  ops::matmul_blocks(Gemm::NT, {h, h_col + m.col, m.B.dim(1)}, ColumnBlock::all(m.B), ColumnBlock::all(y),
                     m.scale / h_scale, first ? 0.0f : 1.0f);
  return false;
}

namespace {
// Where every member's dA goes as one [R, in] f32 block: their stacked gradients themselves when A's
// rows are theirs (at a padded rank the rows between members only ever get g's zero columns), else
// a zeroed temporary that add_member_dAs adds to each member's (*temporary set).
Tensor members_dA_target(const std::vector<SharedInputGroup::Member>& members, const Tensor& A, bool* temporary) {
  std::vector<LoraPair*> pairs;
  for (const auto& m : members) pairs.push_back(m.pair);
  const Tensor& stacked = pairs[0]->stacked_grad_A;
  *temporary = !(stacked_in(pairs, &LoraPair::grad_A, stacked) && stacked.dim(0) == A.dim(0));
  return *temporary ? Tensor::zeros({A.dim(0), A.dim(1)}, DType::F32, A.device()) : stacked;
}
void add_member_dAs(const std::vector<SharedInputGroup::Member>& members, const Tensor& dA) {
  for (const auto& m : members) ops::add_(m.pair->grad_A, dA.slice_rows(m.col, m.col + m.pair->r));
}

// dA of every member in one GEMM [R, in] (f32: gradients accumulate), alpha · gᵀ x. x may be wide
// (shrink).
void members_dA(const std::vector<SharedInputGroup::Member>& members, const Tensor& A, const ColumnBlock& g,
                const Tensor& x, float alpha) {
  bool temporary = false;
  Tensor dA = members_dA_target(members, A, &temporary);
  ops::matmul_blocks(Gemm::TN, g, {x, 0, A.dim(1)}, ColumnBlock::all(dA), alpha, 1.0f);
  if (temporary) add_member_dAs(members, dA);
}
}  // namespace

void SharedInputGroup::member_dB(int i, const ColumnBlock& dy) const {
  // On the side stream (ops/side_work.h): nothing reads the weight gradients before the optimizer.
  const Member& m = members[i];
  const ops::SideWork side(dy.t.device(), {dy.t, h});
  // dB += s · dyᵀ h_i   [out, r]   (h may already hold s: h_scale)
  ops::matmul_blocks(Gemm::TN, dy, {h, h_col + m.col, m.pair->r}, ColumnBlock::all(m.pair->grad_B), m.scale / h_scale,
                     1.0f);
}

void SharedInputGroup::members_dropout_backward(const Tensor& x, const ColumnBlock& g, float alpha,
                                                const ColumnBlock* dx, bool dx_holds) {
  const ColumnBlock input{x, 0, A.dim(1)};
  bool temporary = false;
  Tensor stacked_dA = one_mask ? members_dA_target(members, A, &temporary) : Tensor();
  // Part i: member i's dA += alpha · g_iᵀ drop_i(x) (when with_dA) and its share drop_i'(alpha · g_i
  // A_i) of dx; with one mask, one part over the stacked A.
  auto part = [&](int i, bool with_dA, const ColumnBlock* into, bool accumulate) {
    const Member& m = members[i];
    const int64_t col = one_mask ? 0 : m.col, w = one_mask ? A.dim(0) : width(i);
    Tensor none;
    Tensor& dA = !with_dA ? none : one_mask ? stacked_dA : m.pair->grad_A;
    ops::dropout_shrink_backward(input, m.draws, {g.t, g.col + col, w}, A.slice_rows(col, col + w), dA, alpha, into,
                                 accumulate);
  };
  // One mask where a side stream runs: dA beside the input gradient (only the optimizer reads it),
  // then dx on the main stream, drawing the mask again: a GEMM and one pass (base120m all-linear
  // with dropout: 466 -> 485k tokens/s, H200). A member's own mask: both in one pass (split so, the
  // three fused backwards of q, k, v lost 10%: their passes are bound by the draws, not by bytes).
  // The first share is added to dx only when dx_holds.
  if (one_mask && ops::side_work_enabled(x.device())) {
    {
      const ops::SideWork side(x.device(), {x, g.t});  // reads g's columns; the main stream writes dx's
      part(0, true, nullptr, false);
      if (temporary) add_member_dAs(members, stacked_dA);
    }
    if (dx) part(0, false, dx, dx_holds);
    return;
  }
  const int parts = one_mask ? 1 : static_cast<int>(members.size());
  for (int i = 0; i < parts; ++i) part(i, true, dx, dx_holds || i > 0);
  if (temporary) add_member_dAs(members, stacked_dA);
}

void SharedInputGroup::finish_backward() {
  g = h = x_ext = Tensor();  // the last use of the group's activations (the side work keeps what it reads)
  backward_done = 0;
  trained = false;
}

bool SharedInputGroup::backward(int i, const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_holds) {
  const Member& m = members[i];
  member_dB(i, ColumnBlock::all(dy));
  // g_i = s · dy B_i    [N, r]
  if (!g.defined()) g = Tensor::empty({h.dim(0), A.dim(0)}, h.dtype(), h.device());
  ops::matmul_blocks(Gemm::NN, ColumnBlock::all(dy), ColumnBlock::all(m.B), {g, m.col, m.B.dim(1)}, m.scale, 0.0f);
  backward_done |= 1u << i;
  if (backward_done != all_members()) return false;
  if (dropped()) {  // g holds s: alpha 1
    const int64_t in = A.dim(1);
    if (dx && !dx_holds && (!dx->defined() || dx->dim(0) != x.dim(0) || dx->dim(1) != in))
      *dx = Tensor::empty({x.dim(0), in}, h.dtype(), h.device());
    const ColumnBlock dx_block = dx ? ColumnBlock{*dx, 0, in} : ColumnBlock{};
    members_dropout_backward(x, ColumnBlock::all(g), 1.0f, dx ? &dx_block : nullptr, dx_holds);
    finish_backward();
    return dx != nullptr;
  }
  {
    const ops::SideWork side(x.device(), {g, x});
    members_dA(members, A, ColumnBlock::all(g), x, 1.0f);
  }
  if (dx) ops::matmul_nn(g, A, *dx, 1.0f, dx_holds ? 1.0f : 0.0f);  // Σ s_i g_i A_i
  finish_backward();
  return dx != nullptr;
}

Tensor SharedInputGroup::extended_backward(const Tensor& x, const std::vector<ColumnBlock>& dys, const Tensor* packed,
                                           bool need_dx) {
  LR_CHECK(x_ext.defined() && dys.size() == members.size() && backward_done == 0 && (need_dx || packed),
           "extended_backward of a LoRA group without its K-extended forward");
  const int64_t in = A.dim(1), R = A.dim(0);
  for (size_t i = 0; i < members.size(); ++i) member_dB(static_cast<int>(i), dys[i]);
  const Tensor& stacked = members[0].pair->W_ext_stacked;  // with packed: q, k, v's, a frozen k's rows included
  LR_CHECK(!packed || (stacked.defined() && stacked.dim(0) == packed->dim(1)), "extended_backward: packed ",
           packed ? packed->str() : "", " without stacked weights of its width");
  // [dx | g] = Σ dy_i [W_i | 0 … B_i … 0]: the frozen input gradients and g (without s) in one GEMM
  // each, or in one over the packed dys and the stacked weights; without need_dx only g, from the
  // stack's last R columns
  Tensor out = Tensor::empty({x.dim(0), need_dx ? in + R : R}, h.dtype(), h.device());
  if (!need_dx) {
    ops::matmul_blocks(Gemm::NN, ColumnBlock::all(*packed), {stacked, in, R}, ColumnBlock::all(out), 1.0f, 0.0f);
  } else if (packed) {
    ops::matmul_nn(*packed, stacked, out);
  } else {
    for (size_t i = 0; i < members.size(); ++i)
      ops::matmul_blocks(Gemm::NN, dys[i], ColumnBlock::all(members[i].pair->W_ext), ColumnBlock::all(out), 1.0f,
                         i ? 1.0f : 0.0f);
  }
  const ColumnBlock g_block{out, need_dx ? in : 0, R}, dx{out, 0, in};
  if (dropped()) {
    members_dropout_backward(x, g_block, h_scale, need_dx ? &dx : nullptr, need_dx);
  } else {
    {
      const ops::SideWork side(x.device(), {out, x});  // reads g's columns; the main stream writes dx's
      members_dA(members, A, g_block, x, h_scale);
    }
    if (need_dx) ops::matmul_blocks(Gemm::NN, g_block, ColumnBlock::all(A), dx, h_scale, 1.0f);  // dx += s g A
  }
  finish_backward();
  return out;
}

}  // namespace lowrank::lora
