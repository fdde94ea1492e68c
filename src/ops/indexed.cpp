// Dispatch of the ops indexed by token ids or positions: embedding (and its backward), RoPE.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids) {
  const Device d = detail::op_device("embedding", {&table});
  LR_DISPATCH(d, embedding(table, ids));
}

Tensor embedding(const Tensor& table, const Tensor& ids) {
  const Device d = detail::op_device("embedding", {&table, &ids});
  LR_DISPATCH(d, embedding(table, ids));
}

void embedding_backward_(Tensor& table_grad, const std::vector<int32_t>& ids, const Tensor& dy) {
  const Device d = detail::op_device("embedding_backward_", {&table_grad, &dy});
  LR_DISPATCH(d, embedding_backward_(table_grad, ids, dy));
}

void embedding_backward_(Tensor& table_grad, const Tensor& ids, const Tensor& dy) {
  const Device d = detail::op_device("embedding_backward_", {&table_grad, &ids, &dy});
  LR_DISPATCH(d, embedding_backward_(table_grad, ids, dy));
}

void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse) {
  const Device d = detail::op_device("rope_", {&x, &cos, &sin});
  LR_DISPATCH(d, rope_(x, heads, pos, cos, sin, inverse));
}

void rope_(Tensor& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin, bool inverse) {
  const Device d = detail::op_device("rope_", {&x, &pos, &cos, &sin});
  LR_DISPATCH(d, rope_(x, heads, pos, cos, sin, inverse));
}

void rope_columns_(const ColumnBlock& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin,
                   bool inverse) {
  const Device d = detail::op_device("rope_columns_", {&x.t, &pos, &cos, &sin});
  check_column_block("rope_columns_", x);
  LR_DISPATCH(d, rope_columns_(x, heads, pos, cos, sin, inverse));
}

}  // namespace lowrank::ops
