#pragma once
// Element types. Compute happens in F32 (CPU) or BF16/F16 with F32 accumulation (CUDA); the other
// types exist so that any safetensors file can be read and inspected.
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace lowrank {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool, F8_E4M3, F8_E5M2 };

size_t dtype_size(DType t);
// safetensors spelling: "F32", "BF16", ...
std::string_view dtype_name(DType t);
std::optional<DType> parse_dtype(std::string_view name);
// Accepts user spellings too: f32/float32, bf16/bfloat16, f16/float16/half.
std::optional<DType> parse_user_dtype(std::string_view name);
bool is_float(DType t);

// bf16 and IEEE half, stored as raw bits.
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace lowrank
