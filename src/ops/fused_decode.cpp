// Dispatch of the fused decode projections.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope) {
  LR_CHECK(!ws.empty() && ws.size() <= 3 && bs.size() == ws.size(), "norm_linears: ", ws.size(), " weights and ",
           bs.size(), " biases");
  LR_CHECK(!rope || rope->heads.size() == ws.size(), "norm_linears: RoPE heads for ", rope->heads.size(),
           " outputs, ", ws.size(), " weights");
  const Device d = detail::op_device("norm_linears", {&x, &norm_w, &ws[0], &bs[0]});
  for (size_t i = 1; i < ws.size(); ++i) detail::op_device("norm_linears", {&x, &ws[i], &bs[i]});
  if (rope) detail::op_device("norm_linears", {&x, &rope->pos, &rope->cos, &rope->sin});
  LR_DISPATCH(d, norm_linears(x, norm_w, eps, ws, bs, rope));
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up) {
  const Device d = detail::op_device("norm_swiglu", {&x, &norm_w, &w_gate, &w_up});
  LR_DISPATCH(d, norm_swiglu(x, norm_w, eps, w_gate, w_up));
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res) {
  const Device d = detail::op_device("linear_residual", {&x, &w, &res});
  LR_DISPATCH(d, linear_residual(x, w, res));
}

}  // namespace lowrank::ops
