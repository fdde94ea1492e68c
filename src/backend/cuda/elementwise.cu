// Element-wise ops: residual adds, products, bias add, activations and SwiGLU (forward and backward), logit
// soft-capping (forward and backward), the dropout backward. f32 or bf16 storage, f32 math with the CPU backend's formulas.
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

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

// Logit soft-capping: x = cap · tanh(x / cap); backward from the capped output y: dy *= 1 - (y / cap)².
template <typename T>
__global__ void softcap_kernel(T* __restrict__ x, float cap, int64_t n) {
  LR_GRID_STRIDE(i, n) x[i] = from_f32<T>(cap * tanhf(to_f32(x[i]) / cap));
}

template <typename D, typename Y>
__global__ void softcap_backward_kernel(D* __restrict__ dy, const Y* __restrict__ y, float cap, int64_t n) {
  LR_GRID_STRIDE(i, n) {
    const float t = to_f32(y[i]) / cap;
    dy[i] = from_f32<D>(to_f32(dy[i]) * (1.0f - t * t));
  }
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

// Same-dtype element-wise maps: out_k[i] = F(in_0[i], ..., in_{NIn-1}[i]). VEC elements per thread
// and access (16 bytes: 8 bf16 or 4 f32) when every pointer is 16-byte aligned and n % VEC == 0,
// else one element per access.
template <typename T, int NIn, int NOut>
struct MapArgs {
  const T* in[NIn];
  T* out[NOut];
  int64_t n;
};

template <typename T, int VEC, int NIn, int NOut, typename F>
__global__ void map_kernel(MapArgs<T, NIn, NOut> a, F f) {
  struct alignas(sizeof(T) * VEC) Pack {
    T v[VEC];
  };
  const int64_t packs = a.n / VEC;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    Pack in[NIn], out[NOut];
#pragma unroll
    for (int k = 0; k < NIn; ++k) in[k] = reinterpret_cast<const Pack*>(a.in[k])[p];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      float x[NIn], y[NOut];
#pragma unroll
      for (int k = 0; k < NIn; ++k) x[k] = to_f32(in[k].v[e]);
      f(x, y);
#pragma unroll
      for (int k = 0; k < NOut; ++k) out[k].v[e] = from_f32<T>(y[k]);
    }
#pragma unroll
    for (int k = 0; k < NOut; ++k) reinterpret_cast<Pack*>(a.out[k])[p] = out[k];
  }
}

template <typename T, int NIn, int NOut, typename F>
void launch_map(const MapArgs<T, NIn, NOut>& a, F f, cudaStream_t st) {
  constexpr int kVec = 16 / sizeof(T);
  bool vec = a.n % kVec == 0;
  for (int k = 0; k < NIn; ++k) vec = vec && reinterpret_cast<uintptr_t>(a.in[k]) % 16 == 0;
  for (int k = 0; k < NOut; ++k) vec = vec && reinterpret_cast<uintptr_t>(a.out[k]) % 16 == 0;
  if (vec) map_kernel<T, kVec><<<grid_for(a.n / kVec, 256), 256, 0, st>>>(a, f);
  else map_kernel<T, 1><<<grid_for(a.n, 256), 256, 0, st>>>(a, f);
  LR_CUDA_LAUNCHED();
}

struct ActForward {
  Act act;
  __device__ void operator()(const float (&x)[1], float (&y)[1]) const { y[0] = act_forward(x[0], act); }
};
struct ActBackward {  // in: dy, x
  Act act;
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = x[0] * act_derivative(x[1], act); }
};
struct SwiGluForward {  // in: g, u
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = x[0] / (1.0f + expf(-x[0])) * x[1]; }
};
struct SwiGluBackward {  // in: dy, g, u; out: dg, du
  __device__ void operator()(const float (&x)[3], float (&y)[2]) const {
    const float d = x[0], gv = x[1], uv = x[2];
    const float sg = 1.0f / (1.0f + expf(-gv));
    const float silu = gv * sg;
    y[1] = d * silu;
    y[0] = d * uv * sg * (1.0f + gv * (1.0f - sg));
  }
};
struct AddScaled {  // in: y, x
  float s;
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = x[0] + s * x[1]; }
};
struct Mul {
  __device__ void operator()(const float (&x)[2], float (&y)[1]) const { y[0] = x[0] * x[1]; }
};

template <typename Y, typename G>
__global__ void dropout_backward_add_kernel(Y* __restrict__ dx, const G* __restrict__ gx,
                                            const uint8_t* __restrict__ mask, float keep, int64_t n) {
  LR_GRID_STRIDE(i, n) if (mask[i]) dx[i] = from_f32<Y>(to_f32(dx[i]) + to_f32(gx[i]) / keep);
}

// Eight consecutive elements as floats, in 16-byte loads (one for bf16, two for f32), and back.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (sizeof(T) == 2) {
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&w);
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = to_f32(e[k]);
  } else {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  if constexpr (sizeof(T) == 2) {
    uint4 w;
    T* e = reinterpret_cast<T*>(&w);
#pragma unroll
    for (int k = 0; k < 8; ++k) e[k] = from_f32<T>(v[k]);
    *reinterpret_cast<uint4*>(p) = w;
  } else {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// The same, eight elements a thread (n % 8 == 0, 16-byte aligned data, 8-byte aligned mask).
template <typename Y, typename G>
__global__ void dropout_backward_add8_kernel(Y* __restrict__ dx, const G* __restrict__ gx,
                                             const uint8_t* __restrict__ mask, float keep, int64_t n) {
  LR_GRID_STRIDE(t, n / 8) {
    const uint2 mw = reinterpret_cast<const uint2*>(mask)[t];
    const uint8_t* m = reinterpret_cast<const uint8_t*>(&mw);
    float d[8], g[8];
    load8(dx + 8 * t, d);
    load8(gx + 8 * t, g);
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (m[k]) d[k] += g[k] / keep;
    store8(dx + 8 * t, d);
  }
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
  if (y.dtype() == x.dtype()) {
    LR_FLOAT_TYPES(y.dtype(), T, launch_map(MapArgs<T, 2, 1>{{y.data<T>(), x.data<T>()}, {y.data<T>()}, n},
                                            AddScaled{s}, st));
    return;
  }
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
  if (y.dtype() == x.dtype()) {
    LR_FLOAT_TYPES(y.dtype(), T, launch_map(MapArgs<T, 2, 1>{{y.data<T>(), x.data<T>()}, {y.data<T>()}, n}, Mul{}, st));
    return;
  }
  LR_FLOAT_TYPES(y.dtype(), Y, LR_FLOAT_TYPES(x.dtype(), X,
      mul_kernel<<<grid_for(n, 256), 256, 0, st>>>(y.data<Y>(), x.data<X>(), n)));
  LR_CUDA_LAUNCHED();
}

void softcap_(Tensor& x, float cap) {
  check_arg(x, "softcap_", "x");
  const int64_t n = x.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(x.device());
  LR_FLOAT_TYPES(x.dtype(), T, softcap_kernel<<<grid_for(n, 256), 256, 0, st>>>(x.data<T>(), cap, n));
  LR_CUDA_LAUNCHED();
}

void softcap_backward_(Tensor& dy, const Tensor& y, float cap) {
  check_arg(dy, "softcap_backward_", "dy");
  check_arg(y, "softcap_backward_", "y");
  check_same_numel(dy, y, "softcap_backward_");
  const int64_t n = dy.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(dy.device());
  LR_FLOAT_TYPES(dy.dtype(), D, LR_FLOAT_TYPES(y.dtype(), Y,
      softcap_backward_kernel<<<grid_for(n, 256), 256, 0, st>>>(dy.data<D>(), y.data<Y>(), cap, n)));
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
  LR_FLOAT_TYPES(x.dtype(), T, launch_map(MapArgs<T, 1, 1>{{x.data<T>()}, {y.data<T>()}, n}, ActForward{a}, st));
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
      launch_map(MapArgs<T, 2, 1>{{dy.data<T>(), x.data<T>()}, {dx.data<T>()}, n}, ActBackward{a}, st));
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
  LR_FLOAT_TYPES(g.dtype(), T,
      launch_map(MapArgs<T, 2, 1>{{g.data<T>(), u.data<T>()}, {y.data<T>()}, n}, SwiGluForward{}, st));
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
      launch_map(MapArgs<T, 3, 2>{{dy.data<T>(), g.data<T>(), u.data<T>()}, {dg.data<T>(), du.data<T>()}, n},
                 SwiGluBackward{}, st));
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
  auto aligned = [](const void* q, size_t to) { return reinterpret_cast<uintptr_t>(q) % to == 0; };
  const bool wide = n % 8 == 0 && aligned(dx.raw(), 16) && aligned(gx.raw(), 16) && aligned(mask.raw(), 8);
  const float keep = static_cast<float>(1.0 - p);
  LR_FLOAT_TYPES(dx.dtype(), Y, LR_FLOAT_TYPES(gx.dtype(), G, {
    if (wide)
      dropout_backward_add8_kernel<<<grid_for(n / 8, 256), 256, 0, st>>>(dx.data<Y>(), gx.data<G>(),
                                                                          mask.data<uint8_t>(), keep, n);
    else
      dropout_backward_add_kernel<<<grid_for(n, 256), 256, 0, st>>>(dx.data<Y>(), gx.data<G>(), mask.data<uint8_t>(),
                                                                    keep, n);
  }));
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
