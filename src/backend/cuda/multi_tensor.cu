// Multi-tensor training ops: one launch over a whole list of f32 tensors (every LoRA A and B, or
// every weight under --full) instead of one launch per tensor. The host cuts the tensors into
// chunks of at most kChunk elements and uploads the chunk table (pointers and lengths) once per
// call; block b works on chunk b. Sums of squares are reduced per chunk in f64 and then added in
// chunk order, so the total depends only on the tensor list (reproducible run to run).
#include <vector>

#include "common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "lowrank/core/device_memory.h"

namespace lowrank::cuda {
namespace {

constexpr int64_t kChunk = 1 << 16;
constexpr int kThreads = 256;

struct Chunk {
  float* x;  // the chunk's first element of tensor list 0 (param, or the only list)
  float* g;  // ... of list 1 (grad)
  float* m;  // ... of list 2 (exp_avg)
  float* v;  // ... of list 3 (exp_avg_sq)
  __nv_bfloat16* w;  // AdamW: the bf16 working copy the updated param is rounded into (or null);
                     // with w_ld, the copy's first element, else the chunk's
  int64_t first;     // the chunk's first element in its tensor
  int32_t n;
  int32_t decay;  // AdamW: weight decay for this tensor
  int32_t w_cols, w_ld;  // w_ld > 0: a wider working copy [rows, w_ld], the param [rows, w_cols]
  __nv_bfloat16* w2;     // AdamW: a second bf16 home of the param (or null): its element (0, 0),
  int32_t w2_cols, w2_ld;  // the param [rows, w2_cols] in rows of w2_ld (ops::adamw_update_all_'s `also`)
};

// The chunk table of `lists` (1 to 4 lists of equally shaped f32 tensors), on the device, with the
// optional per-tensor weight-decay flags and bf16 working copies (undefined entries: none; a copy
// with more rows or columns than its 2-D param holds it in its top-left block: LoRA at a padded
// rank, src/lora/rank_padding.h).
Tensor chunk_table(const char* op, std::initializer_list<const std::vector<Tensor>*> lists,
                   const std::vector<uint8_t>* decay, Device* device, int* count,
                   const std::vector<Tensor>* working = nullptr, const std::vector<ColumnBlock>* also = nullptr) {
  const std::vector<Tensor>& first = **lists.begin();
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < first.size(); ++i) {
    float* ptr[4] = {nullptr, nullptr, nullptr, nullptr};
    int k = 0;
    for (const std::vector<Tensor>* l : lists) {
      LR_CHECK(l->size() == first.size(), op, ": tensor lists of different lengths");
      const Tensor& t = (*l)[i];
      check_arg(t, op, "tensor");
      LR_CHECK(t.dtype() == DType::F32 && t.numel() == first[i].numel() && t.device() == first[0].device(), op,
               ": tensors must be F32, shaped alike and on one device, got ", t.str(), " for ", first[i].str());
      ptr[k++] = t.data<float>();
    }
    __nv_bfloat16* w = nullptr;
    int32_t w_cols = 0, w_ld = 0;
    if (working && (*working)[i].defined()) {
      const Tensor& t = (*working)[i];
      const Tensor& p = first[i];
      const bool wider = t.numel() != p.numel() && t.rank() == 2 && p.rank() == 2 && t.dim(0) >= p.dim(0) &&
                         t.dim(1) >= p.dim(1);
      LR_CHECK(t.dtype() == DType::BF16 && (t.numel() == p.numel() || wider) && t.device() == p.device(), op,
               ": working copy ", t.str(), " for ", p.str(), " must be BF16 of its size or wider");
      w = t.data<__nv_bfloat16>();
      if (wider) {
        w_cols = static_cast<int32_t>(p.dim(1));
        w_ld = static_cast<int32_t>(t.dim(1));
      }
    }
    __nv_bfloat16* w2 = nullptr;  // checked by the dispatch (src/ops/training.cpp)
    int32_t w2_cols = 0, w2_ld = 0;
    if (also && (*also)[i].t.defined()) {
      const ColumnBlock& b = (*also)[i];
      w2 = b.t.data<__nv_bfloat16>() + b.col;
      w2_cols = static_cast<int32_t>(b.width);
      w2_ld = static_cast<int32_t>(b.t.dim(1));
    }
    const int64_t n = first[i].numel();
    for (int64_t off = 0; off < n; off += kChunk)
      chunks.push_back({ptr[0] + off, ptr[1] ? ptr[1] + off : nullptr, ptr[2] ? ptr[2] + off : nullptr,
                        ptr[3] ? ptr[3] + off : nullptr, w && !w_ld ? w + off : w, off,
                        static_cast<int32_t>(std::min(kChunk, n - off)), decay ? int32_t((*decay)[i]) : 0, w_cols,
                        w_ld, w2, w2_cols, w2_ld});
  }
  *device = first.empty() ? Device::cuda(0) : first[0].device();
  *count = static_cast<int>(chunks.size());
  LR_CHECK(chunks.size() < (1u << 31), op, ": too many chunks");
  if (chunks.empty()) return Tensor();
  Tensor table = Tensor::empty({static_cast<int64_t>(chunks.size() * sizeof(Chunk))}, DType::U8, *device);
  device_copy(table.raw(), *device, chunks.data(), Device::cpu(), chunks.size() * sizeof(Chunk));
  return table;
}

const Chunk* chunks_of(const Tensor& table) { return static_cast<const Chunk*>(table.raw()); }

__global__ void zero_kernel(const Chunk* __restrict__ chunks) {
  const Chunk c = chunks[blockIdx.x];
  for (int i = threadIdx.x; i < c.n; i += blockDim.x) c.x[i] = 0.0f;
}

__global__ void sum_squares_kernel(const Chunk* __restrict__ chunks, double* __restrict__ partial) {
  __shared__ double scratch[kThreads / 32];
  const Chunk c = chunks[blockIdx.x];
  double s = 0.0;
  for (int i = threadIdx.x; i < c.n; i += blockDim.x) {
    const double v = c.x[i];
    s += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) t += scratch[w];
    partial[blockIdx.x] = t;
  }
}

// acc += Σ partial, in order, by one warp (lane-strided sums, then a fixed shuffle tree).
__global__ void add_partials_kernel(const double* __restrict__ partial, int count, double* __restrict__ acc) {
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += 32) s += partial[i];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x == 0) *acc += s;
}

__global__ void clip_kernel(const Chunk* __restrict__ chunks, const double* __restrict__ total_sumsq, double max_norm) {
  const double total = sqrt(*total_sumsq);
  if (!isfinite(total)) return;
  const double coef = max_norm / (total + 1e-6);  // torch's clip_coef
  if (!(coef < 1.0)) return;
  const float f = static_cast<float>(coef);
  const Chunk c = chunks[blockIdx.x];
  for (int i = threadIdx.x; i < c.n; i += blockDim.x) c.x[i] = c.x[i] * f;
}

// The element formula of adamw_update_ (optimizer.cu), explicitly rounded: bit-identical to it.
__device__ __forceinline__ float lerp_torch(float self, float end, float weight) {
  return fabsf(weight) < 0.5f ? __fadd_rn(self, __fmul_rn(weight, __fsub_rn(end, self)))
                              : __fsub_rn(end, __fmul_rn(__fsub_rn(end, self), __fsub_rn(1.0f, weight)));
}

__global__ void adamw_kernel(const Chunk* __restrict__ chunks, AdamWScalars s) {
  const Chunk c = chunks[blockIdx.x];
  const bool decay = s.apply_decay && c.decay;
  for (int i = threadIdx.x; i < c.n; i += blockDim.x) {
    float pi = c.x[i];
    if (decay) pi = __fmul_rn(pi, s.decay);
    const float gi = c.g[i];
    const float mi = lerp_torch(c.m[i], gi, s.lerp_w);
    float vi = __fmul_rn(c.v[i], s.beta2);
    vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(s.one_minus_beta2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    const float pn = __fadd_rn(pi, __fmul_rn(s.neg_step, __fdiv_rn(mi, denom)));
    c.x[i] = pn;
    c.m[i] = mi;
    c.v[i] = vi;
    if (c.w) {
      const int64_t j = c.first + i;
      c.w[c.w_ld ? j / c.w_cols * c.w_ld + j % c.w_cols : i] = __float2bfloat16_rn(pn);
    }
    if (c.w2) {
      const int64_t j = c.first + i;
      c.w2[j / c.w2_cols * c.w2_ld + j % c.w2_cols] = __float2bfloat16_rn(pn);
    }
  }
}

}  // namespace

void zero_all_(const std::vector<Tensor>& xs) {
  Device d;
  int count = 0;
  const Tensor table = chunk_table("zero_all_", {&xs}, nullptr, &d, &count);
  if (count == 0) return;
  zero_kernel<<<count, kThreads, 0, stream_for(d)>>>(chunks_of(table));
  LR_CUDA_LAUNCHED();
}

void sum_squares_all_(const std::vector<Tensor>& xs, Tensor& acc) {
  check_arg(acc, "sum_squares_all_", "accumulator", true);
  LR_CHECK(acc.dtype() == DType::F64 && acc.numel() == 1, "sum_squares_all_: accumulator must be F64 [1], got ",
           acc.str());
  Device d;
  int count = 0;
  const Tensor table = chunk_table("sum_squares_all_", {&xs}, nullptr, &d, &count);
  if (count == 0) return;
  LR_CHECK(d == acc.device(), "sum_squares_all_: accumulator on ", acc.device().str(), ", tensors on ", d.str());
  Tensor partial = Tensor::empty({count}, DType::F64, d);
  cudaStream_t st = stream_for(d);
  sum_squares_kernel<<<count, kThreads, 0, st>>>(chunks_of(table), partial.data<double>());
  LR_CUDA_LAUNCHED();
  add_partials_kernel<<<1, 32, 0, st>>>(partial.data<double>(), count, acc.data<double>());
  LR_CUDA_LAUNCHED();
}

void clip_by_total_all_(const std::vector<Tensor>& xs, const Tensor& total_sumsq, double max_norm) {
  check_arg(total_sumsq, "clip_by_total_all_", "total", true);
  LR_CHECK(total_sumsq.dtype() == DType::F64 && total_sumsq.numel() == 1,
           "clip_by_total_all_: total must be F64 [1], got ", total_sumsq.str());
  Device d;
  int count = 0;
  const Tensor table = chunk_table("clip_by_total_all_", {&xs}, nullptr, &d, &count);
  if (count == 0) return;
  clip_kernel<<<count, kThreads, 0, stream_for(d)>>>(chunks_of(table), total_sumsq.data<double>(), max_norm);
  LR_CUDA_LAUNCHED();
}

void adamw_update_all_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                       const std::vector<uint8_t>& decay, const AdamWScalars& s, const std::vector<Tensor>& working,
                       const std::vector<ColumnBlock>& also) {
  LR_CHECK(decay.size() == params.size() && (working.empty() || working.size() == params.size()) &&
               (also.empty() || also.size() == params.size()),
           "adamw_update_all_: ", decay.size(), " decay flags, ", working.size(), " working copies and ", also.size(),
           " second copies for ", params.size(), " tensors");
  Device d;
  int count = 0;
  const Tensor table = chunk_table("adamw_update_all_", {&params, &grads, &exp_avg, &exp_avg_sq}, &decay, &d, &count,
                                   working.empty() ? nullptr : &working, also.empty() ? nullptr : &also);
  if (count == 0) return;
  adamw_kernel<<<count, kThreads, 0, stream_for(d)>>>(chunks_of(table), s);
  LR_CUDA_LAUNCHED();
}

}  // namespace lowrank::cuda
