#include "lowrank/lora/shared_input.h"

#include "lowrank/ops/ops.h"

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

int SharedInputGroup::index_of(Target t) const {
  for (size_t i = 0; i < members.size(); ++i)
    if (members[i].target == t) return static_cast<int>(i);
  return -1;
}

void SharedInputGroup::shrink(const Tensor& x) {
  h = Tensor::empty({x.dim(0), A.dim(0)}, x.dtype(), x.device());
  ops::matmul_nt(x, A, h);  // [N, R]
  x_data = x.raw();
  forward_done = 0;
}

void SharedInputGroup::expand(int i, Tensor& y) const {
  const Member& m = members[i];
  ops::matmul_blocks(Gemm::NT, {h, m.col, m.pair->r}, ColumnBlock::all(m.B), ColumnBlock::all(y), m.scale, 1.0f);
}

bool SharedInputGroup::backward(int i, const Tensor& x, const Tensor& dy, Tensor* dx) {
  const Member& m = members[i];
  LoraPair& p = *m.pair;
  // dB += s · dyᵀ h_i   [out, r]
  ops::matmul_blocks(Gemm::TN, ColumnBlock::all(dy), {h, m.col, p.r}, ColumnBlock::all(p.grad_B), m.scale, 1.0f);
  // g_i = s · dy B_i    [N, r]
  if (!g.defined()) g = Tensor::empty(h.shape(), h.dtype(), h.device());
  ops::matmul_blocks(Gemm::NN, ColumnBlock::all(dy), ColumnBlock::all(m.B), {g, m.col, p.r}, m.scale, 0.0f);
  backward_done |= 1u << i;
  if (backward_done != all_members()) return false;
  // dA of all members in one GEMM [R, in] (f32: gradients accumulate), then into each member's.
  Tensor dA = Tensor::empty({A.dim(0), A.dim(1)}, DType::F32, x.device());
  ops::matmul_tn(g, x, dA);
  for (const Member& mm : members) ops::add_(mm.pair->grad_A, dA.slice_rows(mm.col, mm.col + mm.pair->r));
  if (dx) ops::matmul_nn(g, A, *dx, 1.0f, 1.0f);  // Σ s_i g_i A_i
  g = Tensor();
  backward_done = 0;
  return true;
}

}  // namespace lowrank::lora
