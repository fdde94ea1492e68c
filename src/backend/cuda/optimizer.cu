// AdamW element update on f32 master weights and moments. The arithmetic uses explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...) so nvcc cannot fuse it into FMAs: the result then matches
// the CPU backend's (and torch's) op order bit for bit, up to sqrt/div which are IEEE-rounded too.
#include <initializer_list>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

__device__ __forceinline__ float lerp_torch(float self, float end, float weight) {
  return fabsf(weight) < 0.5f ? __fadd_rn(self, __fmul_rn(weight, __fsub_rn(end, self)))
                              : __fsub_rn(end, __fmul_rn(__fsub_rn(end, self), __fsub_rn(1.0f, weight)));
}

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWScalars s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i];
    if (s.apply_decay) pi = __fmul_rn(pi, s.decay);
    const float gi = g[i];
    const float mi = lerp_torch(m[i], gi, s.lerp_w);
    float vi = __fmul_rn(v[i], s.beta2);
    vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(s.one_minus_beta2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    p[i] = __fadd_rn(pi, __fmul_rn(s.neg_step, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s) {
  for (const Tensor* t : std::initializer_list<const Tensor*>{&param, &grad, &exp_avg, &exp_avg_sq}) {
    check_arg(*t, "adamw_update_", "tensor");
    LR_CHECK(t->dtype() == DType::F32 && t->numel() == param.numel() && t->device() == param.device(),
             "adamw_update_: param, grad and moments must be F32 of one shape on one device, got ", t->str(), " for ",
             param.str());
  }
  const int64_t n = param.numel();
  if (n == 0) return;
  cudaStream_t st = stream_for(param.device());
  adamw_kernel<<<grid_for(n, 256), 256, 0, st>>>(param.data<float>(), grad.data<float>(), exp_avg.data<float>(),
                                                 exp_avg_sq.data<float>(), n, s);
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
