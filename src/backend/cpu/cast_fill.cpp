// CPU dtype conversion, fill, in-place scaling and products, column copies.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

Tensor cast(const Tensor& x, DType dtype) { return x.to(dtype); }

void cast_into_(Tensor& out, const Tensor& x) {
  LR_CHECK(out.numel() == x.numel(), "cast_into_ ", x.str(), " into ", out.str());
  convert_floats(x.raw(), x.dtype(), out.raw(), out.dtype(), x.numel());
}

void fill_(Tensor& x, float value) { x.fill_(value); }

void scale_(Tensor& x, float s) {
  float* p = x.f32();
  const int64_t n = x.numel();
#pragma omp parallel for simd if (n > 32768)
  for (int64_t i = 0; i < n; ++i) p[i] *= s;
}

void mul_(Tensor& y, const Tensor& x) {
  LR_CHECK(y.numel() == x.numel(), y.str(), " *= ", x.str());
  float* a = y.f32();
  const float* b = x.f32();
  const int64_t n = y.numel();
#pragma omp parallel for simd if (n > 32768)
  for (int64_t i = 0; i < n; ++i) a[i] *= b[i];
}

void softcap_(Tensor& x, float cap) {
  float* a = x.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n > 32768)
  for (int64_t i = 0; i < n; ++i) a[i] = cap * std::tanh(a[i] / cap);
}

void softcap_backward_(Tensor& dy, const Tensor& y, float cap) {
  LR_CHECK(dy.numel() == y.numel(), "softcap_backward_ ", dy.str(), " for ", y.str());
  float* g = dy.f32();
  const float* t = y.f32();
  const int64_t n = dy.numel();
#pragma omp parallel for simd if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float th = t[i] / cap;  // tanh(x / cap)
    g[i] *= 1.0f - th * th;
  }
}

void copy_columns_(Tensor& dst, int64_t dst_col, const Tensor& src, int64_t src_col, int64_t width) {
  LR_CHECK(dst.rank() == 2 && src.rank() == 2 && dst.dim(0) == src.dim(0) && dst.dtype() == src.dtype() &&
               width >= 0 && dst_col >= 0 && src_col >= 0 && dst_col + width <= dst.dim(1) &&
               src_col + width <= src.dim(1),
           "copy_columns_ ", dst.str(), "[:, ", dst_col, "+", width, "] <- ", src.str(), "[:, ", src_col, "]");
  const size_t es = dtype_size(dst.dtype());
  const int64_t rows = dst.dim(0), dc = dst.dim(1), sc = src.dim(1);
  char* d = static_cast<char*>(dst.raw());
  const char* s = static_cast<const char*>(src.raw());
  for (int64_t r = 0; r < rows; ++r)
    std::memmove(d + (r * dc + dst_col) * es, s + (r * sc + src_col) * es, static_cast<size_t>(width) * es);
}

}  // namespace lowrank::cpu
