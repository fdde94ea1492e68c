// Cross-entropy over logits rows with f32 math: one block per row, an online max/sum-of-exp pass,
// then (optionally) the gradient pass scale * (softmax - onehot). The caller chunks the rows, so
// only a [chunk, V] logits buffer exists at a time; the gradient may overwrite the logits in place.
#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "reduce.h"

namespace lowrank::cuda {
namespace {

enum Mode : int { kLossOnly = 0, kWriteGrad = 1, kAddGrad = 2 };
constexpr int kThreads = 512;

// (m, s) pairs: s = Σ exp(x - m). Merging keeps the larger max.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

template <typename T, int N>
struct alignas(N * sizeof(T) >= 16 ? 16 : N * sizeof(T)) PackN {
  T v[N];
};

// VEC elements per access: 8 (16-byte bf16 / 2 x 16-byte f32 accesses) when the rows allow it.
template <typename L, typename D, int VEC>
__global__ void cross_entropy_kernel(const L* logits, const int32_t* __restrict__ targets, D* dlogits,
                                     float* __restrict__ row_loss, int64_t V, float scale,
                                     const float* __restrict__ scale_ptr, int mode) {
  __shared__ float sm[32], ss[32];
  __shared__ float x_target;
  using LP = PackN<L, VEC>;
  using DP = PackN<D, VEC>;
  const int64_t r = blockIdx.x, packs = V / VEC;
  const L* row = logits + r * V;
  const LP* rowp = reinterpret_cast<const LP*>(row);
  DP* drow = reinterpret_cast<DP*>(dlogits + r * V);
  const int32_t t = targets[r];
  const bool counted = t >= 0 && t < V;  // -100 (and anything invalid) is ignored
  if (!counted) {
    if (threadIdx.x == 0) row_loss[r] = 0.0f;
    if (mode == kWriteGrad) {
      DP z;
#pragma unroll
      for (int e = 0; e < VEC; ++e) z.v[e] = from_f32<D>(0.0f);
      for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) drow[i] = z;
    }
    return;
  }
  if (scale_ptr) scale = *scale_ptr;
  if (threadIdx.x == 0) x_target = to_f32(row[t]);
  float m = -INFINITY, s = 0.0f;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const LP p = rowp[i];
    float pm = to_f32(p.v[0]);
#pragma unroll
    for (int e = 1; e < VEC; ++e) pm = fmaxf(pm, to_f32(p.v[e]));
    if (pm > m) {  // rescale the running sum once per pack, not per element
      s *= expf(m - pm);
      m = pm;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) s += expf(to_f32(p.v[e]) - m);
  }
  for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();  // also orders the read of x_target before any gradient write
  m = -INFINITY;
  s = 0.0f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) merge(m, s, sm[w], ss[w]);
  const float log_sum = logf(s);
  if (threadIdx.x == 0) row_loss[r] = log_sum + m - x_target;
  if (mode == kLossOnly) return;
  const float shift = m + log_sum;
  for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
    const LP p = rowp[i];
    DP o;
    if (mode == kAddGrad) o = drow[i];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      float g = scale * expf(to_f32(p.v[e]) - shift);
      if (i * VEC + e == t) g -= scale;
      if (mode == kAddGrad) g += to_f32(o.v[e]);
      o.v[e] = from_f32<D>(g);
    }
    drow[i] = o;
  }
}

// Runs the kernel and adds the NLL sum of the rows into acc (F64 on the device).
void run(const Tensor& logits, const Tensor& targets, float scale, Tensor* dlogits, int mode, double* acc,
         const float* scale_ptr = nullptr) {
  const int64_t n = logits.dim(0), V = logits.dim(1);
  if (n == 0) return;
  LR_CHECK(n < (1LL << 31), "cross-entropy: too many rows ", n);
  Tensor row_loss = Tensor::empty({n}, DType::F32, logits.device());
  cudaStream_t st = stream_for(logits.device());
  const DType dt = dlogits ? dlogits->dtype() : logits.dtype();
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = V % 8 == 0 && aligned(logits.raw()) && (!dlogits || aligned(dlogits->raw()));
  LR_FLOAT_TYPES(logits.dtype(), L, LR_FLOAT_TYPES(dt, D, {
    const L* lp = logits.data<L>();
    D* dp = dlogits ? dlogits->data<D>() : nullptr;
    if (vec)
      cross_entropy_kernel<L, D, 8><<<unsigned(n), kThreads, 0, st>>>(lp, targets.data<int32_t>(), dp,
                                                                      row_loss.data<float>(), V, scale, scale_ptr, mode);
    else
      cross_entropy_kernel<L, D, 1><<<unsigned(n), kThreads, 0, st>>>(lp, targets.data<int32_t>(), dp,
                                                                      row_loss.data<float>(), V, scale, scale_ptr, mode);
  }));
  LR_CUDA_LAUNCHED();
  sum_to_f64(row_loss.raw(), DType::F32, n, false, acc, logits.device());
}

Tensor upload_targets(const Tensor& logits, const std::vector<int32_t>& targets) {
  const int64_t n = logits.dim(0), V = logits.dim(1);
  LR_CHECK(static_cast<int64_t>(targets.size()) == n, logits.str(), " vs ", targets.size(), " targets");
  for (int32_t t : targets) LR_CHECK(t == -100 || (t >= 0 && t < V), "target ", t, " outside vocabulary ", V);
  return upload_i32(targets, logits.device());
}

double read_f64(const Tensor& t) { return t.to(Device::cpu()).data<double>()[0]; }  // waits for the GPU

}  // namespace

double cross_entropy_sum(const Tensor& logits, const std::vector<int32_t>& targets, int64_t* count) {
  check_arg(logits, "cross_entropy_sum", "logits");
  LR_CHECK(logits.rank() == 2, "cross_entropy_sum logits ", logits.str());
  Tensor tgt = upload_targets(logits, targets);
  Tensor acc = Tensor::zeros({1}, DType::F64, logits.device());
  run(logits, tgt, 1.0f, nullptr, kLossOnly, acc.data<double>());
  if (count) {
    int64_t c = 0;
    for (int32_t t : targets) c += t != -100;
    *count = c;
  }
  return read_f64(acc);
}

double cross_entropy_backward(const Tensor& logits, const std::vector<int32_t>& targets, float scale,
                              Tensor& dlogits) {
  check_arg(logits, "cross_entropy_backward", "logits");
  check_arg(dlogits, "cross_entropy_backward", "dlogits");
  LR_CHECK(logits.rank() == 2 && dlogits.shape() == logits.shape(), "cross_entropy_backward ", logits.str(), " ",
           dlogits.str());
  Tensor tgt = upload_targets(logits, targets);
  Tensor acc = Tensor::zeros({1}, DType::F64, logits.device());
  run(logits, tgt, scale, &dlogits, kAddGrad, acc.data<double>());
  return read_f64(acc);
}

void cross_entropy_chunk(const Tensor& logits, const Tensor& targets, float scale, Tensor& dlogits,
                         Tensor& loss_sum, const Tensor& device_scale) {
  check_arg(logits, "cross_entropy_chunk", "logits");
  check_arg(targets, "cross_entropy_chunk", "targets", true);
  check_arg(loss_sum, "cross_entropy_chunk", "loss_sum", true);
  LR_CHECK(logits.rank() == 2 && targets.dtype() == DType::I32 && targets.numel() == logits.dim(0),
           "cross_entropy_chunk targets ", targets.str(), " for logits ", logits.str());
  LR_CHECK(loss_sum.dtype() == DType::F64 && loss_sum.numel() == 1, "cross_entropy_chunk: loss_sum must be F64 [1], got ",
           loss_sum.str());
  if (!dlogits.defined() || dlogits.shape() != logits.shape() || !(dlogits.device() == logits.device()))
    dlogits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  check_arg(dlogits, "cross_entropy_chunk", "dlogits");
  if (device_scale.defined()) check_arg(device_scale, "cross_entropy_chunk", "device_scale", true);
  run(logits, targets, scale, &dlogits, kWriteGrad, loss_sum.data<double>(),
      device_scale.defined() ? device_scale.data<float>() : nullptr);
}

}  // namespace lowrank::cuda
