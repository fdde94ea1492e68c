// Dispatch of fused causal attention, forward and backward.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse) {
  const Device d = detail::op_device("attention", {&q, &k, &v});
  LR_DISPATCH(d, attention(q, k, v, s, lse));
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) {
  const Device d = detail::op_device("attention_backward", {&dout, &q, &k, &v, &out, &lse});
  LR_DISPATCH(d, attention_backward(dout, q, k, v, out, lse, s, dq, dk, dv));
}

}  // namespace lowrank::ops
