// The fused decode projections on the CPU: their unfused compositions (the reference the CUDA
// kernels are checked against).
#include "cpu_ops.h"

namespace lowrank::cpu {
namespace {

// y = scale · h Bᵀ + y for output i's update, when it has one.
void add_delta(const std::vector<LowRankDelta>& deltas, size_t i, Tensor& y) {
  if (i < deltas.size() && deltas[i].B.defined()) matmul_nt(deltas[i].h, deltas[i].B, y, deltas[i].scale, 1.0f);
}

}  // namespace

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope,
                                 const std::vector<LowRankDelta>& deltas) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  std::vector<Tensor> ys;
  for (size_t i = 0; i < ws.size(); ++i) {
    ys.push_back(linear(xn, ws[i], bs[i]));
    add_delta(deltas, i, ys[i]);
    if (rope && rope->heads[i] > 0) rope_(ys[i], rope->heads[i], rope->pos, rope->cos, rope->sin, false);
  }
  return ys;
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up,
                   const std::vector<LowRankDelta>& deltas) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  Tensor gate = linear(xn, w_gate, Tensor()), up = linear(xn, w_up, Tensor());
  add_delta(deltas, 0, gate);
  add_delta(deltas, 1, up);
  return swiglu(gate, up);
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res, const std::vector<LowRankDelta>& deltas) {
  Tensor y = linear(x, w, Tensor());
  add_delta(deltas, 0, y);
  add_(y, res);
  return y;
}

}  // namespace lowrank::cpu
