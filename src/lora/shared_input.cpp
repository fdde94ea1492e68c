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

void SharedInputGroup::shrink(const Tensor& x) {
  if (x_ext.defined()) {  // s·h beside x: every member's expand is then its frozen GEMM's K
    h = x_ext;
    h_col = x.dim(1);
    h_scale = members[0].scale;  // one s for the group (k_extension.h)
    ops::matmul_blocks(Gemm::NT, ColumnBlock::all(x), ColumnBlock::all(A), {x_ext, h_col, A.dim(0)}, h_scale, 0.0f);
  } else {
    h = Tensor::empty({x.dim(0), A.dim(0)}, x.dtype(), x.device());
    h_col = 0;
    h_scale = 1;
    ops::matmul_nt(x, A, h);  // [N, R]
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

bool SharedInputGroup::backward(int i, const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_holds) {
  const Member& m = members[i];
  LoraPair& p = *m.pair;
  const Device dev = x.device();
  {  // the weight gradients on the side stream (ops/side_work.h): nothing reads them before the optimizer
    const ops::SideWork side(dev, {dy, h});
    // dB += s · dyᵀ h_i   [out, r]
    ops::matmul_blocks(Gemm::TN, ColumnBlock::all(dy), {h, h_col + m.col, p.r}, ColumnBlock::all(p.grad_B),
                       m.scale / h_scale, 1.0f);
  }
  // g_i = s · dy B_i    [N, r]
  if (!g.defined()) g = Tensor::empty({h.dim(0), A.dim(0)}, h.dtype(), h.device());
  ops::matmul_blocks(Gemm::NN, ColumnBlock::all(dy), ColumnBlock::all(m.B), {g, m.col, m.B.dim(1)}, m.scale, 0.0f);
  backward_done |= 1u << i;
  if (backward_done != all_members()) return false;
  {
    // dA of all members in one GEMM [R, in] (f32: gradients accumulate): straight into their
    // stacked gradients, or into a temporary added to each member's.
    const ops::SideWork side(dev, {g, x});
    std::vector<LoraPair*> pairs;
    for (const Member& mm : members) pairs.push_back(mm.pair);
    Tensor stacked = pairs[0]->stacked_grad_A;
    // Stacked as A is (at a padded rank the rows between members only ever get g's zero columns).
    if (stacked_in(pairs, &LoraPair::grad_A, stacked) && stacked.dim(0) == A.dim(0)) {
      ops::matmul_tn(g, x, stacked, 1.0f, 1.0f);
    } else {
      Tensor dA = Tensor::empty({A.dim(0), A.dim(1)}, DType::F32, x.device());
      ops::matmul_tn(g, x, dA);
      for (const Member& mm : members) ops::add_(mm.pair->grad_A, dA.slice_rows(mm.col, mm.col + mm.pair->r));
    }
  }
  if (dx) ops::matmul_nn(g, A, *dx, 1.0f, dx_holds ? 1.0f : 0.0f);  // Σ s_i g_i A_i
  g = h = x_ext = Tensor();  // the last use of the group's activations (the side work keeps what it reads)
  backward_done = 0;
  trained = false;
  return dx != nullptr;
}

}  // namespace lowrank::lora
