// Dispatch of fused causal attention, forward and backward.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse) {
  const Device d = detail::op_device("attention", {&q, &k, &v});
  LR_DISPATCH(d, attention(q, k, v, s, lse));
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv,
                        const Tensor* packed) {
  const Device d = detail::op_device("attention_backward", {&dout, &q, &k, &v, &out, &lse, packed});
  if (packed)
    LR_CHECK(packed->rank() == 2 && q.rank() == 2 && k.rank() == 2 && v.rank() == 2 && packed->dim(0) == q.dim(0) &&
                 packed->dim(1) == q.dim(1) + k.dim(1) + v.dim(1) && packed->dtype() == q.dtype(),
             "attention_backward: packed ", packed->str(), " for q ", q.str(), " k ", k.str(), " v ", v.str());
  LR_DISPATCH(d, attention_backward(dout, q, k, v, out, lse, s, dq, dk, dv, packed));
}


}  // namespace lowrank::ops
