// Rotary position embedding in place, HF's rotate_half convention: for i < half = rotary_dim/2,
// (a, b) = (x[i], x[i + half]) -> (a cos - b sin, b cos + a sin); inverse rotates by -angle (the
// backward). cos/sin are f32 tables [P, half]; rotary_dim = hd except with partial rotary (Phi-3),
// where each head's dims from rotary_dim on pass through. Math in f32, one rounding per output element.
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

template <typename T>
__global__ void rope_kernel(T* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ cos_t,
                            const float* __restrict__ sin_t, int64_t n, int64_t heads, int64_t hd, int64_t half,
                            int64_t P, float sign, int64_t ld) {
  const int64_t total = n * heads * half;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % half, h = (e / half) % heads, t = e / (half * heads);
    const int32_t p = pos[t];
    if (p < 0 || p >= P) continue;  // positions are validated by the caller (vector form checks)
    const float c = cos_t[int64_t(p) * half + i], s = sin_t[int64_t(p) * half + i];
    T* v = x + t * ld + h * hd;
    const float a = to_f32(v[i]), b = to_f32(v[i + half]);
    v[i] = from_f32<T>(a * c - sign * b * s);
    v[i + half] = from_f32<T>(b * c + sign * a * s);
  }
}

// The fast path: a thread rotates VEC consecutive pairs of one head with 16-byte loads of x (its
// two halves) and of the cos/sin rows. Threads walk (token, group) pairs flattened, so a block of
// 256 covers several rows when a row has few groups (4 heads of 64 dims: 16 threads a row); a
// block per row left most of each small block idle (base7m: 8,192 blocks of 16 active threads,
// 8 µs a call). Index is 32-bit when n · groups fits.
template <typename T, int VEC, typename Index>
__global__ void rope_vec_kernel(T* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ cos_t,
                                const float* __restrict__ sin_t, Index total, int heads, int hd, int half, int64_t P,
                                float sign, int64_t ld) {
  struct alignas(16) Pack {
    T v[VEC];
  };
  struct alignas(16) FPack {
    float v[VEC];
  };
  const Index per_head = half / VEC, groups = heads * per_head;
  for (Index e = blockIdx.x * Index(blockDim.x) + threadIdx.x; e < total; e += Index(gridDim.x) * blockDim.x) {
    const Index t = e / groups, g = e - t * groups;
    const int32_t p = pos[t];
    if (p < 0 || p >= P) continue;
    const int h = static_cast<int>(g / per_head), i = static_cast<int>(g - h * per_head) * VEC;
    T* v = x + int64_t(t) * ld + int64_t(h) * hd;
    Pack a = *reinterpret_cast<const Pack*>(v + i), b = *reinterpret_cast<const Pack*>(v + i + half);
    const FPack c = *reinterpret_cast<const FPack*>(cos_t + int64_t(p) * half + i);
    const FPack sn = *reinterpret_cast<const FPack*>(sin_t + int64_t(p) * half + i);
    Pack ra, rb;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float fa = to_f32(a.v[k]), fb = to_f32(b.v[k]);
      ra.v[k] = from_f32<T>(fa * c.v[k] - sign * fb * sn.v[k]);
      rb.v[k] = from_f32<T>(fb * c.v[k] + sign * fa * sn.v[k]);
    }
    *reinterpret_cast<Pack*>(v + i) = ra;
    *reinterpret_cast<Pack*>(v + i + half) = rb;
  }
}

template <typename T, int VEC>
void launch_rope_vec(cudaStream_t st, T* x, const int32_t* pos, const float* cos_t, const float* sin_t, int64_t n,
                     int heads, int hd, int half, int64_t P, float sign, int64_t ld) {
  const int64_t total = n * heads * (half / VEC);
  const unsigned blocks = grid_for(total, 256);
  if (total <= INT32_MAX)
    rope_vec_kernel<T, VEC, uint32_t><<<blocks, 256, 0, st>>>(x, pos, cos_t, sin_t, static_cast<uint32_t>(total),
                                                              heads, hd, half, P, sign, ld);
  else
    rope_vec_kernel<T, VEC, int64_t><<<blocks, 256, 0, st>>>(x, pos, cos_t, sin_t, total, heads, hd, half, P, sign,
                                                             ld);
}

// Rotates the `heads` heads of columns [col, col + heads·hd) of every row of x (row stride x.dim(1)).
void rope_rows(Tensor& x, int64_t col, int64_t width, int64_t heads, const Tensor& pos, const Tensor& cos,
               const Tensor& sin, bool inverse) {
  check_arg(x, "rope_", "x");
  check_arg(pos, "rope_", "pos", true);
  check_arg(cos, "rope_", "cos");
  check_arg(sin, "rope_", "sin");
  const int64_t n = x.dim(0), hd = heads > 0 ? width / heads : 0, half = cos.rank() == 2 ? cos.dim(1) : 0;
  LR_CHECK(x.rank() == 2 && heads > 0 && width == heads * hd && hd % 2 == 0 && col >= 0 && col + width <= x.dim(1),
           "rope_ x ", x.str(), " columns [", col, ", ", col + width, ") heads ", heads);
  LR_CHECK(pos.dtype() == DType::I32 && pos.numel() == n, "rope_ pos ", pos.str(), " for ", x.str());
  LR_CHECK(cos.dtype() == DType::F32 && sin.dtype() == DType::F32 && cos.rank() == 2 && 2 * half <= hd &&
               sin.shape() == cos.shape(),
           "rope_ tables must be F32 [P, <= ", hd / 2, "], got ", cos.str(), " ", sin.str());
  if (n == 0 || half == 0) return;
  cudaStream_t st = stream_for(x.device());
  const int64_t ld = x.dim(1);
  char* base = static_cast<char*>(x.raw()) + col * dtype_size(x.dtype());
  // 16 bytes of x per load: 8 bf16 or 4 f32 pairs (and 2 or 1 float4 of cos/sin).
  const int vec = x.dtype() == DType::BF16 ? 8 : 4;
  if (half % vec == 0 && hd % vec == 0 && ld % vec == 0 && heads * half / vec <= (1 << 20) && aligned16(base) &&
      aligned16(cos.raw()) && aligned16(sin.raw())) {
    const float sign = inverse ? -1.0f : 1.0f;
    if (x.dtype() == DType::BF16)
      launch_rope_vec<__nv_bfloat16, 8>(st, reinterpret_cast<__nv_bfloat16*>(base), pos.data<int32_t>(),
                                        cos.data<float>(), sin.data<float>(), n, int(heads), int(hd), int(half),
                                        cos.dim(0), sign, ld);
    else
      launch_rope_vec<float, 4>(st, reinterpret_cast<float*>(base), pos.data<int32_t>(), cos.data<float>(),
                                sin.data<float>(), n, int(heads), int(hd), int(half), cos.dim(0), sign, ld);
    LR_CUDA_LAUNCHED();
    return;
  }
  LR_FLOAT_TYPES(x.dtype(), T,
      rope_kernel<<<grid_for(n * heads * half, 256), 256, 0, st>>>(reinterpret_cast<T*>(base), pos.data<int32_t>(),
                                                                   cos.data<float>(), sin.data<float>(), n, heads,
                                                                   hd, half, cos.dim(0), inverse ? -1.0f : 1.0f,
                                                                   ld));
  LR_CUDA_LAUNCHED();
}

}  // namespace

void rope_(Tensor& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin, bool inverse) {
  LR_CHECK(x.rank() == 2, "rope_ x ", x.str());
  rope_rows(x, 0, x.dim(1), heads, pos, cos, sin, inverse);
}

void rope_columns_(const ColumnBlock& x, int64_t heads, const Tensor& pos, const Tensor& cos, const Tensor& sin,
                   bool inverse) {
  Tensor t = x.t;
  rope_rows(t, x.col, x.width, heads, pos, cos, sin, inverse);
}

void rope_(Tensor& x, int64_t heads, const std::vector<int32_t>& pos, const Tensor& cos, const Tensor& sin,
           bool inverse) {
  for (int32_t p : pos)
    LR_CHECK(p >= 0 && p < cos.dim(0), "position ", p, " beyond rope table ", cos.dim(0));
  rope_(x, heads, upload_i32(pos, x.device()), cos, sin, inverse);
}

}  // namespace lowrank::cuda
