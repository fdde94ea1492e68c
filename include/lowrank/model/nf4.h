#pragma once
// NF4 weights (QLoRA, arXiv 2305.14314) stored exactly as bitsandbytes stores them
// (bnb.functional.quantize_4bit(W, quant_type="nf4", blocksize=64, compress_statistics=True)):
//
//   - W [out, in] is read flat, row-major, in blocks of 64 elements (a block may span rows);
//   - absmax[b] = max |W| over block b; each element x of the block becomes the code (0..15) of the
//     NF4 value nearest x · (1 / absmax[b]) (bnb's decision tree over the code book's midpoints);
//   - codes are packed two per byte, element 2i in the high nibble of byte i, 2i + 1 in the low;
//   - double quantization: offset = mean(absmax); absmax - offset is quantized blockwise again, in
//     blocks of 256, to 8-bit codes of the signed dynamic map (create_dynamic_map(signed=True)),
//     with one f32 absmax per 256-block;
//   - dequantized: absmax[b] = map[absmax_code[b]] · absmax2[b / 256] + offset (f32, two roundings,
//     as bnb's two kernels), then W = nf4[code] · absmax[b] (f32; rounded to bf16 once on the GPU).
//
// Memory: 4 bits + 8/64 bits + 32/(64·256) bits ≈ 4.127 bits per parameter.
#include <array>
#include <cstdint>

#include "lowrank/core/tensor.h"

namespace lowrank::model {

inline constexpr int64_t kNf4BlockSize = 64;      // elements per absmax (bnb blocksize)
inline constexpr int64_t kAbsmaxBlockSize = 256;  // absmaxes per second-level absmax (bnb: fixed 256)

// One weight in NF4 with double-quantized absmax (bnb's packed weight + QuantState).
struct Nf4Weight {
  Shape shape;          // the dense weight's shape, [out, in]
  Tensor codes;         // U8 [(numel + 1) / 2]    4-bit codes, high nibble first
  Tensor absmax_codes;  // U8 [blocks]             (absmax - offset) as dynamic-map codes (bnb QuantState.absmax)
  Tensor absmax_scale;  // F32 [ceil(blocks/256)]  absmax of each 256-block of absmax - offset (state2.absmax)
  Tensor absmax_map;    // F32 [256]               the signed dynamic map (state2.code)
  float offset = 0.0f;  // mean of the first-level absmax (QuantState.offset)
  DType dtype = DType::F32;  // what dequantize() produces: the model's compute dtype

  bool defined() const { return codes.defined(); }
  int64_t numel() const;
  int64_t blocks() const { return (numel() + kNf4BlockSize - 1) / kNf4BlockSize; }
  Device device() const { return codes.device(); }
  Nf4Weight to(Device device) const;
  // Bytes held (codes, absmax codes and scales, the map): what the weight costs in memory.
  size_t nbytes() const;
};

// The 16 NF4 values, code 0..15 (lowrank/backend/nf4_code.h).
const std::array<float, 16>& nf4_code_book();
// The NF4 code of a value already scaled into [-1, 1]: bitsandbytes' decision tree (strict > at each
// midpoint, so a value on a midpoint takes the lower code; NaN — a block of zeros — gives code 0).
uint8_t nf4_code_of(float normalized);
// The same code as a count of the tree's thresholds below the value (what nf4_quantize uses: no
// branches); equal to nf4_code_of for every float (tested).
uint8_t nf4_code_of_fast(float normalized);
// bnb's create_dynamic_map(signed=True): 256 sorted values in [-1, 1] (7 decades of means of
// linspace(0.1, 1) points, both signs, 0 and 1), as torch 2.11 computes them on the GPU box (the
// map bnb stores in its checkpoints there).
std::array<float, 256> dynamic_map_signed();
// The code of x (already scaled into [-1, 1]) in a sorted 256-entry map: bnb's 7-step binary
// search, then the nearer neighbour by the midpoint (ties to the lower code).
uint8_t dynamic_code_of(const std::array<float, 256>& map, float x);

// Quantizes a [out, in] weight (any float dtype, any device; read as f32 on the host) to NF4 on the
// host, then moves the result to `device`. `dtype` is the dtype dequantize() will produce.
Nf4Weight nf4_quantize(const Tensor& weight, DType dtype, Device device);
// The dequantized first-level absmax [blocks], f32 on the host.
std::vector<float> nf4_absmax(const Nf4Weight& w);
// The dense weight [out, in] in w.dtype on w's device (ops::nf4_dequantize: the CPU loop or the
// CUDA kernel; equal bit for bit after the bf16 rounding).
Tensor nf4_dequantize(const Nf4Weight& w);

}  // namespace lowrank::model
