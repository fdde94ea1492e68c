// Element-wise ops: residual adds, products, bias add, activations and SwiGLU (forward and backward), the
// dropout backward. f32 or bf16 storage, f32 math with the CPU backend's formulas.
#include "common.cuh"
#include "lowrank/backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

#define LR_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <typename Y, typename X>
__global__ void add_scaled_kernel(Y* __restrict__ y, const X* __restrict__ x, float s, int64_t n) {
  LR_GRID_STRIDE(i, n) y[i] = from_f32<Y>(to_f32(y[i]) + s * to_f32(x[i]));
}

template <typename Y, typename X>
__global__ void mul_kernel(Y* __restrict__ y, const X* __restrict__ x, int64_t n) {
  LR_GRID_STRIDE(i, n) y[i] = from_f32<Y>(to_f32(y[i]) * to_f32(x[i]));
}

template <typename Y, typename B>
__global__ void add_bias_kernel(Y* __restrict__ y, const B* __restrict__ b, int64_t n, int64_t cols) {
  LR_GRID_STRIDE(i, n) y[i] = from_f32<Y>(to_f32(y[i]) + to_f32(b[i % cols]));
}

__device__ __forceinline__ float act_forward(float v, Act a) {
  switch (a) {
    case Act::SiLU: return v / (1.0f + expf(-v));
    case Act::GeluTanh: {
      const float k = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
    case Act::GeluErf: return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    default: return v > 0 ? v : 0.0f;
  }
}

__device__ __forceinline__ float act_derivative(float v, Act a) {
  switch (a) {
    case Act::SiLU: {
      const float sg = 1.0f / (1.0f + expf(-v));
      return sg * (1.0f + v * (1.0f - sg));
    }
    case Act::GeluTanh: {
      const float k = 0.7978845608028654f;
      const float t = tanhf(k * (v + 0.044715f * v * v * v));
      return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * v * v);
    }
    case Act::GeluErf:
      return 0.5f * (1.0f + erff(v * 0.7071067811865476f)) + v * 0.3989422804014327f * expf(-0.5f * v * v);
    default: return v > 0 ? 1.0f : 0.0f;
  }
}

template <typename T>
__global__ void activation_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, Act a) {
  LR_GRID_STRIDE(i, n) y[i] = from_f32<T>(act_forward(to_f32(x[i]), a));
}

template <typename T>
__global__ void activation_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
                                           int64_t n, Act a) {
  LR_GRID_STRIDE(i, n) dx[i] = from_f32<T>(to_f32(dy[i]) * act_derivative(to_f32(x[i]), a));
}

template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, int64_t n) {
  LR_GRID_STRIDE(i, n) {
    const float gv = to_f32(g[i]);
    y[i] = from_f32<T>(gv / (1.0f + expf(-gv)) * to_f32(u[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ g, const T* __restrict__ u,
                                       T* __restrict__ dg, T* __restrict__ du, int64_t n) {
  LR_GRID_STRIDE(i, n) {
    const float gv = to_f32(g[i]), uv = to_f32(u[i]), d = to_f32(dy[i]);
    const float sg = 1.0f / (1.0f + expf(-gv));
    const float silu = gv * sg;
    du[i] = from_f32<T>(d * silu);
    dg[i] = from_f32<T>(d * uv * sg * (1.0f + gv * (1.0f - sg)));
  }
}

template <typename Y, typename G>
__global__ void dropout_backward_add_kernel(Y* __restrict__ dx, const G* __restrict__ gx,
                                            const uint8_t* __restrict__ mask, float keep, int64_t n) {
  LR_GRID_STRIDE(i, n) if (mask[i]) dx[i] = from_f32<Y>(to_f32(dx[i]) + to_f32(gx[i]) / keep);
}

void check_same_numel(const Tensor& a, const Tensor& b, const char* op) {
  LR_CHECK(a.numel() == b.numel(), op, ": ", a.str(), " vs ", b.str());
}

}  // namespace

void add_(Tensor& y, const Tensor& x) { add_scaled_(y, x, 1.0f); }

void add_scaled_(Tensor& y, const Tensor& x, float s) {
  check_arg(y, "add_scaled_", "y");
  check_arg(x, "add_scaled_", "x");
  check_same_numel(y, x, "add_scaled_");
  const int64_t n = y.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(y.device());
  LR_FLOAT_TYPES(y.dtype(), Y, LR_FLOAT_TYPES(x.dtype(), X,
      add_scaled_kernel<<<grid_for(n, 256), 256, 0, st>>>(y.data<Y>(), x.data<X>(), s, n)));
  LR_CUDA_LAUNCHED();
}

void mul_(Tensor& y, const Tensor& x) {
  check_arg(y, "mul_", "y");
  check_arg(x, "mul_", "x");
  check_same_numel(y, x, "mul_");
  const int64_t n = y.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(y.device());
  LR_FLOAT_TYPES(y.dtype(), Y, LR_FLOAT_TYPES(x.dtype(), X,
      mul_kernel<<<grid_for(n, 256), 256, 0, st>>>(y.data<Y>(), x.data<X>(), n)));
  LR_CUDA_LAUNCHED();
}

void add_bias_(Tensor& y, const Tensor& b) {
  check_arg(y, "add_bias_", "y");
  check_arg(b, "add_bias_", "b");
  const int64_t cols = y.dim(-1), n = y.numel();
  LR_CHECK(b.numel() == cols, y.str(), " + bias ", b.str());
  if (n == 0) return;
  cudaStream_t st = stream_for(y.device());
  LR_FLOAT_TYPES(y.dtype(), Y, LR_FLOAT_TYPES(b.dtype(), B,
      add_bias_kernel<<<grid_for(n, 256), 256, 0, st>>>(y.data<Y>(), b.data<B>(), n, cols)));
  LR_CUDA_LAUNCHED();
}

Tensor activation(const Tensor& x, Act a) {
  check_arg(x, "activation", "x");
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return y;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T, activation_kernel<<<grid_for(n, 256), 256, 0, st>>>(x.data<T>(), y.data<T>(), n, a));
  LR_CUDA_LAUNCHED();
  return y;
}

Tensor activation_backward(const Tensor& dy, const Tensor& x, Act a) {
  check_arg(dy, "activation_backward", "dy");
  check_arg(x, "activation_backward", "x");
  check_same_numel(dy, x, "activation_backward");
  LR_CHECK(dy.dtype() == x.dtype(), "activation_backward: dy ", dy.str(), " vs x ", x.str());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return dx;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T,
      activation_backward_kernel<<<grid_for(n, 256), 256, 0, st>>>(dy.data<T>(), x.data<T>(), dx.data<T>(), n, a));
  LR_CUDA_LAUNCHED();
  return dx;
}

Tensor swiglu(const Tensor& g, const Tensor& u) {
  check_arg(g, "swiglu", "g");
  check_arg(u, "swiglu", "u");
  check_same_numel(g, u, "swiglu");
  LR_CHECK(g.dtype() == u.dtype(), "swiglu: ", g.str(), " vs ", u.str());
  Tensor y = Tensor::empty(g.shape(), g.dtype(), g.device());
  const int64_t n = g.numel();
  if (n == 0) return y;
  cudaStream_t st = stream_for(g.device());
  LR_FLOAT_TYPES(g.dtype(), T, swiglu_kernel<<<grid_for(n, 256), 256, 0, st>>>(g.data<T>(), u.data<T>(), y.data<T>(), n));
  LR_CUDA_LAUNCHED();
  return y;
}

void swiglu_backward(const Tensor& dy, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  check_arg(dy, "swiglu_backward", "dy");
  check_arg(g, "swiglu_backward", "g");
  check_arg(u, "swiglu_backward", "u");
  check_same_numel(dy, g, "swiglu_backward");
  check_same_numel(g, u, "swiglu_backward");
  LR_CHECK(dy.dtype() == g.dtype() && g.dtype() == u.dtype(), "swiglu_backward dtypes ", dy.str(), " ", g.str(), " ",
           u.str());
  dg = Tensor::empty(g.shape(), g.dtype(), g.device());
  du = Tensor::empty(u.shape(), u.dtype(), u.device());
  const int64_t n = g.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(g.device());
  LR_FLOAT_TYPES(g.dtype(), T,
      swiglu_backward_kernel<<<grid_for(n, 256), 256, 0, st>>>(dy.data<T>(), g.data<T>(), u.data<T>(), dg.data<T>(),
                                                               du.data<T>(), n));
  LR_CUDA_LAUNCHED();
}

void dropout_backward_add_(Tensor& dx, const Tensor& gx, const Tensor& mask, double p) {
  check_arg(dx, "dropout_backward_add_", "dx");
  check_arg(gx, "dropout_backward_add_", "gx");
  check_arg(mask, "dropout_backward_add_", "mask", true);
  check_same_numel(dx, gx, "dropout_backward_add_");
  check_same_numel(dx, mask, "dropout_backward_add_");
  LR_CHECK(mask.dtype() == DType::U8, "dropout mask ", mask.str());
  const int64_t n = dx.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(dx.device());
  LR_FLOAT_TYPES(dx.dtype(), Y, LR_FLOAT_TYPES(gx.dtype(), G,
      dropout_backward_add_kernel<<<grid_for(n, 256), 256, 0, st>>>(dx.data<Y>(), gx.data<G>(),
                                                                    mask.data<uint8_t>(), static_cast<float>(1.0 - p), n)));
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
