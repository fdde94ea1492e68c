// Dispatch of the paged KV cache ops: writing K/V rows into the pools, decode attention.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

void paged_kv_write_(Tensor& k_pool, Tensor& v_pool, const Tensor& k, const Tensor& v, const Tensor& slots) {
  const Device d = detail::op_device("paged_kv_write_", {&k_pool, &v_pool, &k, &v, &slots});
  LR_DISPATCH(d, paged_kv_write_(k_pool, v_pool, k, v, slots));
}

Tensor paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                       const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s) {
  const Device d = detail::op_device("paged_attention", {&q, &k_pool, &v_pool, &block_tables, &lens});
  LR_DISPATCH(d, paged_attention(q, k_pool, v_pool, block_tables, lens, block_size, max_len, s));
}

Tensor argmax_rows(const Tensor& x) {
  const Device d = detail::op_device("argmax_rows", {&x});
  LR_DISPATCH(d, argmax_rows(x));
}

Tensor project_argmax(const Tensor& x, const Tensor& w, Tensor& ids) {
  const Device d = detail::op_device("project_argmax", {&x, &w, &ids});
  LR_DISPATCH(d, project_argmax(x, w, ids));
}

}  // namespace lowrank::ops
