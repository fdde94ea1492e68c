#pragma once
// The seam through which a caller keeps the keys and values of a KV-cached forward pass itself
// (the paged KV cache of infer/, shared by many sequences): each layer hands it q, k, v after its
// norms and RoPE, and takes back the attention output.
#include "lowrank/core/tensor.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::model {

class AttentionCache {
 public:
  virtual ~AttentionCache() = default;
  // q [N, H*hd], k/v [N, KV*hd] for the forward's N = s.batch * s.seq rows of `layer`: stores k
  // and v and returns attention over what the rows may see -> [N, H*hd]. `s` carries the layer's
  // window, scale and soft-capping.
  virtual Tensor attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, const ops::AttentionShape& s) = 0;
};

}  // namespace lowrank::model
