// Embedding gather and its scatter-add backward. The backward adds rows with f32 atomics (a token
// repeated in a batch adds in any order: not bit-reproducible, within f32 rounding).
#include "common.cuh"
#include "dependent_launch.cuh"
#include "launch_trace.cuh"
#include "backend/cuda/cuda_ops.h"

namespace lowrank::cuda {
namespace {

template <typename T>
__global__ void gather_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, T* __restrict__ out,
                              int64_t V, int64_t d, LaunchStamp* stamps) {
  stamp_start(stamps);
  allow_dependents();  // a dependent after it (a decode step's first layer) loads its weights meanwhile
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r];
  const bool ok = id >= 0 && id < V;  // bad ids give a zero row instead of a wild read
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    out[r * d + i] = ok ? table[int64_t(id) * d + i] : from_f32<T>(0.0f);
  stamp_end(stamps);
}

template <typename G>
__global__ void scatter_add_kernel(float* __restrict__ table_grad, const int32_t* __restrict__ ids,
                                   const G* __restrict__ dy, int64_t V, int64_t d) {
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r];
  if (id < 0 || id >= V) return;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) atomicAdd(&table_grad[int64_t(id) * d + i], to_f32(dy[r * d + i]));
}

void check_ids(const Tensor& ids, const char* op) {
  check_arg(ids, op, "ids", true);
  LR_CHECK(ids.dtype() == DType::I32 && ids.rank() == 1, op, ": ids must be I32 [n], got ", ids.str());
}

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  check_arg(table, "embedding", "table");
  check_ids(ids, "embedding");
  LR_CHECK(table.rank() == 2, "embedding table ", table.str());
  const int64_t V = table.dim(0), d = table.dim(1), n = ids.numel();
  Tensor out = Tensor::empty({n, d}, table.dtype(), table.device());
  if (n == 0 || d == 0) return out;
  LR_CHECK(n < (1LL << 31), "embedding: too many ids ", n);
  cudaStream_t st = stream_for(table.device());
  LR_FLOAT_TYPES(table.dtype(), T,
      gather_kernel<<<unsigned(n), 256, 0, st>>>(table.data<T>(), ids.data<int32_t>(), out.data<T>(), V, d,
                                                 next_launch_stamps(table.device(), "embedding", n)));
  LR_CUDA_LAUNCHED();
  return out;
}

Tensor embedding(const Tensor& table, const std::vector<int32_t>& ids) {
  const int64_t V = table.dim(0);
  for (int32_t id : ids)
    if (id < 0 || id >= V) throw error("token id ", id, " is outside the vocabulary [0, ", V, ")");
  return embedding(table, upload_i32(ids, table.device()));
}

void embedding_backward_(Tensor& table_grad, const Tensor& ids, const Tensor& dy) {
  check_arg(table_grad, "embedding_backward_", "table_grad");
  check_arg(dy, "embedding_backward_", "dy");
  check_ids(ids, "embedding_backward_");
  LR_CHECK(table_grad.dtype() == DType::F32 && table_grad.rank() == 2,
           "embedding_backward_: table_grad must be F32 [V, d], got ", table_grad.str());
  const int64_t V = table_grad.dim(0), d = table_grad.dim(1), n = ids.numel();
  LR_CHECK(dy.numel() == n * d, "embedding_backward_ dy ", dy.str(), " for ", n, " ids of dim ", d);
  if (n == 0 || d == 0) return;
  cudaStream_t st = stream_for(dy.device());
  LR_FLOAT_TYPES(dy.dtype(), G,
      scatter_add_kernel<<<unsigned(n), 256, 0, st>>>(table_grad.data<float>(), ids.data<int32_t>(), dy.data<G>(), V,
                                                      d));
  LR_CUDA_LAUNCHED();
}

void embedding_backward_(Tensor& table_grad, const std::vector<int32_t>& ids, const Tensor& dy) {
  embedding_backward_(table_grad, upload_i32(ids, dy.device()), dy);
}

}  // namespace lowrank::cuda
