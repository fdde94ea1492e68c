// Dispatch of fused causal attention, forward and backward.
#include "dispatch.h"
#include "lowrank/core/error.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {
namespace {

// The CUDA kernels have no soft-capping yet; models that need it are refused at load (Model).
void check_cuda_softcap(Device d, const AttentionShape& s) {
  if (d.is_cuda() && s.softcap != 0)
    throw error("attention logit soft-capping is not supported on CUDA yet (use --device cpu)");
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, Tensor* lse) {
  const Device d = detail::op_device("attention", {&q, &k, &v});
  check_cuda_softcap(d, s);
  LR_DISPATCH(d, attention(q, k, v, s, lse));
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const AttentionShape& s, Tensor& dq, Tensor& dk, Tensor& dv) {
  const Device d = detail::op_device("attention_backward", {&dout, &q, &k, &v, &out, &lse});
  check_cuda_softcap(d, s);
  LR_DISPATCH(d, attention_backward(dout, q, k, v, out, lse, s, dq, dk, dv));
}

}  // namespace lowrank::ops
