#include "rank_padding.h"

#include <cstdlib>
#include <cstring>

#include "lowrank/ops/ops.h"

namespace lowrank::lora {

int64_t compute_rank(int64_t r, Device device) {
  // LOWRANK_PAD_RANK=0: the adapter's rank as it is (for A/B measurements)
  static const bool off = [] {
    const char* v = std::getenv("LOWRANK_PAD_RANK");
    return v && std::strcmp(v, "0") == 0;
  }();
  if (!device.is_cuda() || off) return r;
  return (r + 7) / 8 * 8;
}

Tensor padded_rows(const Tensor& a, int64_t rows, DType dtype) {
  Tensor out = Tensor::zeros({rows, a.dim(1)}, dtype, a.device());
  Tensor block = out.slice_rows(0, a.dim(0));
  ops::cast_into_(block, a);
  return out;
}

Tensor padded_columns(const Tensor& b, int64_t cols, DType dtype) {
  Tensor out = Tensor::zeros({b.dim(0), cols}, dtype, b.device());
  ops::copy_columns_(out, 0, ops::cast(b, dtype), 0, b.dim(1));
  return out;
}

}  // namespace lowrank::lora
