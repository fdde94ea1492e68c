// Dispatch of NF4 dequantization (the weight of a quantized projection, just before its GEMM).
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {

void nf4_dequantize(const Tensor& codes, const Tensor& absmax_codes, const Tensor& absmax_scale,
                    const Tensor& absmax_map, float offset, Tensor& out) {
  const Device d = detail::op_device("nf4_dequantize", {&codes, &absmax_codes, &absmax_scale, &absmax_map, &out});
  // The quantization state must fit `out` (bnb's blocks: 64 weights per absmax, 256 absmaxes per scale).
  constexpr int64_t kBlock = 64, kAbsmaxBlock = 256;
  const int64_t n = out.numel(), blocks = (n + kBlock - 1) / kBlock;
  LR_CHECK(codes.dtype() == DType::U8 && codes.numel() == (n + 1) / 2, "nf4_dequantize: codes ", codes.str(),
           " for ", out.str());
  LR_CHECK(absmax_codes.dtype() == DType::U8 && absmax_codes.numel() == blocks, "nf4_dequantize: absmax codes ",
           absmax_codes.str(), " for ", blocks, " blocks");
  LR_CHECK(absmax_scale.dtype() == DType::F32 && absmax_scale.numel() == (blocks + kAbsmaxBlock - 1) / kAbsmaxBlock,
           "nf4_dequantize: absmax scales ", absmax_scale.str(), " for ", blocks, " blocks");
  LR_CHECK(absmax_map.dtype() == DType::F32 && absmax_map.numel() == 256, "nf4_dequantize: map ", absmax_map.str());
  LR_DISPATCH(d, nf4_dequantize(codes, absmax_codes, absmax_scale, absmax_map, offset, out));
}

}  // namespace lowrank::ops
