// The I32-tensor forms of the indexed ops (embedding, its backward, RoPE) on the CPU: they read the
// ids into a vector and run the vector forms, so both forms check ids the same way.
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {
namespace {
std::vector<int32_t> ids_vector(const Tensor& ids, const char* what) {
  LR_CHECK(ids.dtype() == DType::I32 && ids.device().is_cpu() && ids.rank() == 1, what, " ids ", ids.str());
  std::vector<int32_t> v(static_cast<size_t>(ids.numel()));
  if (!v.empty()) std::memcpy(v.data(), ids.raw(), v.size() * sizeof(int32_t));
  return v;
}
}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) { return embedding(table, ids_vector(ids, "embedding")); }

void embedding_backward_(Tensor& table_grad, const Tensor& ids, const Tensor& dy) {
  embedding_backward_(table_grad, ids_vector(ids, "embedding_backward"), dy);
}

void rope_(Tensor& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin, bool inverse) {
  rope_(x, heads, ids_vector(pos, "rope"), cos, sin, inverse);
}

void rope_columns_(const ColumnBlock& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin,
                   bool inverse) {
  Tensor block = Tensor::empty({x.t.dim(0), x.width}, x.t.dtype());  // gathered, rotated, written back
  copy_columns_(block, 0, x.t, x.col, x.width);
  rope_(block, heads, pos, cos, sin, inverse);
  Tensor dst = x.t;
  copy_columns_(dst, x.col, block, 0, x.width);
}

}  // namespace lowrank::cpu
