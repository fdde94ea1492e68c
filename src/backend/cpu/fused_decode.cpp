// The fused decode projections on the CPU: their unfused compositions (the reference the CUDA
// kernels are checked against).
#include "cpu_ops.h"

namespace lowrank::cpu {

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  std::vector<Tensor> ys;
  for (size_t i = 0; i < ws.size(); ++i) {
    ys.push_back(linear(xn, ws[i], bs[i]));
    if (rope && rope->heads[i] > 0) rope_(ys[i], rope->heads[i], rope->pos, rope->cos, rope->sin, false);
  }
  return ys;
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  return swiglu(linear(xn, w_gate, Tensor()), linear(xn, w_up, Tensor()));
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res) {
  Tensor y = linear(x, w, Tensor());
  add_(y, res);
  return y;
}

}  // namespace lowrank::cpu
