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

namespace {
void check_packed(const char* op, const Tensor& qkv, const AttentionShape& s) {
  LR_CHECK(qkv.rank() == 2 && qkv.dim(0) == s.batch * s.seq && qkv.dim(1) == (s.heads + 2 * s.kv_heads) * s.head_dim,
           op, ": qkv ", qkv.str(), " for ", s.batch, "x", s.seq, " tokens of ", s.heads, " + 2 x ", s.kv_heads,
           " heads of ", s.head_dim);
}
}  // namespace

Tensor attention_packed(const Tensor& qkv, const AttentionShape& s, Tensor* lse) {
  const Device d = detail::op_device("attention_packed", {&qkv});
  check_packed("attention_packed", qkv, s);
  LR_DISPATCH(d, attention_packed(qkv, s, lse));
}

void attention_backward_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse,
                               const AttentionShape& s, Tensor& dqkv) {
  const Device d = detail::op_device("attention_backward_packed", {&dout, &qkv, &out, &lse});
  check_packed("attention_backward_packed", qkv, s);
  LR_DISPATCH(d, attention_backward_packed(dout, qkv, out, lse, s, dqkv));
}

}  // namespace lowrank::ops
