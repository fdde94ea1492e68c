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
  // For a forward of one decode row: the paged pools of `layer` and the row's slot, block table
  // and length (row.pos and the shape fields are the model's to fill), so that the model may run
  // all its layers in one launch (ops::decode_stack), or have each layer's projections write k and
  // v into the pools (ops::KVWrite) and call paged_attention itself, instead of calling attend().
  // False (the default): no such view.
  virtual bool paged_row(int layer, Tensor& k_pool, Tensor& v_pool, ops::DecodeRow& row) const { return false; }
};

}  // namespace lowrank::model
