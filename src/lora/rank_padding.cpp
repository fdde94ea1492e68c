#include "lowrank/lora/rank_padding.h"

#include <cstdlib>
#include <cstring>

#include "lowrank/ops/ops.h"

namespace lowrank::lora {

int64_t compute_rank(int64_t r, Device device) {
  static const bool off = [] {
    const char* v = std::getenv("LOWRANK_PAD_RANK");
    return v && std::strcmp(v, "0") == 0;
  }();
  if (!device.is_cuda() || off) return r;
  return (r + 7) / 8 * 8;
}

void cast_into_block(Tensor& out, const Tensor& value, int64_t col) {
  if (col == 0 && out.numel() == value.numel()) {
    ops::cast_into_(out, value);
    return;
  }
  LR_CHECK(out.rank() == 2 && value.rank() == 2 && col >= 0 && out.dim(0) >= value.dim(0) &&
               out.dim(1) >= col + value.dim(1),
           "cast_into_block: ", value.str(), " into ", out.str(), " at column ", col);
  Tensor rows = out.slice_rows(0, value.dim(0));
  if (out.dim(1) == value.dim(1)) ops::cast_into_(rows, value);
  else ops::copy_columns_(rows, col, ops::cast(value, out.dtype()), 0, value.dim(1));
}

Tensor padded(const Tensor& value, int64_t rows, int64_t cols, DType dtype) {
  Tensor out = Tensor::zeros({rows, cols}, dtype, value.device());
  cast_into_block(out, value);
  return out;
}

}  // namespace lowrank::lora
