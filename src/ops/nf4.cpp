// Dispatch of NF4 dequantization (the weight of a quantized projection, just before its GEMM).
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

void nf4_dequantize(const Tensor& codes, const Tensor& absmax_codes, const Tensor& absmax_scale,
                    const Tensor& absmax_map, float offset, Tensor& out) {
  const Device d = detail::op_device("nf4_dequantize", {&codes, &absmax_codes, &absmax_scale, &absmax_map, &out});
  LR_DISPATCH(d, nf4_dequantize(codes, absmax_codes, absmax_scale, absmax_map, offset, out));
}

}  // namespace lowrank::ops
