#include "lowrank/model/norm.h"

#include "lowrank/ops/ops.h"

namespace lowrank::model {
namespace {

// Gemma stores its RMSNorm weights centred on 0 and scales by (1 + w): the op gets 1 + w, formed in
// f32 (also for bf16 weights) as transformers does. d(1 + w) = dw, so the backward's weight gradient
// is w's.
Tensor effective_weight(NormKind kind, const Tensor& w) {
  if (kind != NormKind::RMSOnePlus) return w;
  Tensor one_plus = Tensor::empty(w.shape(), DType::F32, w.device());
  ops::fill_(one_plus, 1.0f);
  ops::add_(one_plus, w);
  return one_plus;
}

}  // namespace

Tensor normalize(NormKind kind, float eps, const Norm& n, const Tensor& x, Tensor* mean, Tensor* rstd,
                 const ops::ColumnBlock* into) {
  if (kind != NormKind::Layer) return ops::rmsnorm(x, effective_weight(kind, n.weight), eps, rstd, into);
  Tensor y = ops::layernorm(x, n.weight, n.bias, eps, mean, rstd);
  if (!into) return y;
  Tensor dst = into->t;
  ops::copy_columns_(dst, into->col, y, 0, y.dim(1));
  return dst;
}

Tensor normalize_backward(NormKind kind, const Norm& n, Norm* g, const Tensor& dy, const Tensor& x,
                          const Tensor& mean, const Tensor& rstd, const Tensor* dres, const Tensor* into) {
  if (kind == NormKind::Layer) {
    LR_CHECK(!into && (!dres || dres->numel() == x.numel()), "LayerNorm's backward into or from a wider gradient");
    Tensor dense = dy;  // a wider dy (LoRA's K-extension): its first columns
    if (dy.numel() != x.numel()) {
      dense = Tensor::empty(x.shape(), dy.dtype(), dy.device());
      ops::copy_columns_(dense, 0, dy, 0, x.dim(1));
    }
    return ops::layernorm_backward(dense, x, n.weight, mean, rstd, g ? &g->weight : nullptr, g ? &g->bias : nullptr,
                                   dres);
  }
  return ops::rmsnorm_backward(dy, x, effective_weight(kind, n.weight), rstd, g ? &g->weight : nullptr, dres, into);
}

}  // namespace lowrank::model
