// Attention for callers whose shapes vary from call to call (inside a ShapesVary scope: a server's
// prefills, B prompts of T tokens, both new at almost every call; evaluation's examples). cuDNN
// builds a plan on the first call of every (B, T): 50–110 ms on an H200 (`bench_cuda_ops
// --attention-plans`), more than a whole prefill of 64 prompts of 128 tokens takes. A server meeting new batch sizes paid it in
// most prefills (64 clients: time to first token 25 ms in one run, 156 in the next).
//   T < kCudnnFromT: the tensor-core kernels, which need no plan (at T = 128 they take 0.006–0.033
//     ms a layer against cuDNN's 0.009–0.021).
//   longer: cuDNN one sequence at a time, T padded with zero rows up to a multiple of kCudnnBucket,
//     so one plan per bucket serves every length in it (the tensor-core kernels take 2–3× cuDNN's
//     time there). Exact: a causal row never sees the rows after it. A T of whole buckets needs no
//     padding: each sequence's rows are read where they are.
#include "attention.h"
#include "attention_cudnn.h"
#include "lowrank/core/device_memory.h"

namespace lowrank::cuda {
namespace {
constexpr int64_t kCudnnFromT = 1024;
constexpr int64_t kCudnnBucket = 1024;

// Rows [begin, begin + n) of a 2-D tensor into rows [to, to + n) of another with the same columns.
void copy_rows(const Tensor& src, int64_t begin, Tensor& dst, int64_t to, int64_t n) {
  const size_t row = static_cast<size_t>(src.dim(1)) * dtype_size(src.dtype());
  device_copy(static_cast<char*>(dst.raw()) + to * row, dst.device(), static_cast<const char*>(src.raw()) + begin * row,
              src.device(), n * row);
}

// A [rows, cols] tensor like x whose rows from `from` on are zero (padding keys and values must
// be finite: masked scores still multiply them).
Tensor padded_like(const Tensor& x, int64_t rows, int64_t from) {
  Tensor p = Tensor::empty({rows, x.dim(1)}, x.dtype(), x.device());
  const size_t row = static_cast<size_t>(x.dim(1)) * dtype_size(x.dtype());
  device_memset_zero(static_cast<char*>(p.raw()) + from * row, p.device(), (rows - from) * row);
  return p;
}
}  // namespace

Tensor attention_varying(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s) {
  if (s.seq < kCudnnFromT) return attention_tc_supported(q, k, v, s) ? attention_tc(q, k, v, s, nullptr) : Tensor();
  const int64_t T = s.seq, Tp = (T + kCudnnBucket - 1) / kCudnnBucket * kCudnnBucket;
  AttentionShape one = s;
  one.batch = 1;
  one.seq = Tp;
  std::string why;
  Tensor out, lse;
  if (s.batch == 1 && Tp == T) return attention_cudnn(q, k, v, one, out, lse, &why) ? out : Tensor();
  const bool padded = Tp != T;
  Tensor qp, kp, vp;
  if (padded) qp = padded_like(q, Tp, T), kp = padded_like(k, Tp, T), vp = padded_like(v, Tp, T);
  Tensor all = Tensor::empty(q.shape(), q.dtype(), q.device());
  for (int64_t b = 0; b < s.batch; ++b) {
    if (padded) {
      copy_rows(q, b * T, qp, 0, T);
      copy_rows(k, b * T, kp, 0, T);
      copy_rows(v, b * T, vp, 0, T);
    } else {
      qp = q.slice_rows(b * T, (b + 1) * T);
      kp = k.slice_rows(b * T, (b + 1) * T);
      vp = v.slice_rows(b * T, (b + 1) * T);
    }
    if (!attention_cudnn(qp, kp, vp, one, out, lse, &why)) return Tensor();  // no plan: at b = 0, nothing written
    copy_rows(out, 0, all, b * T, T);
  }
  return all;
}

}  // namespace lowrank::cuda
