// LoRA's shrink through its dropout on the CPU, one block of rows at a time: a block's dropout(x)
// (and mask) is drawn into a thread's buffer and read by the block's GEMMs while it is still in
// cache, instead of a pass writing dropout(x) [N, in] to memory and the GEMMs reading it back. The
// backward draws each block's mask once for dA and dx, and masks g A block by block (no [N, in]
// gradient before the mask either). Same draws as ops::dropout (dropout_run.h); the GEMMs' sums
// are split by blocks, so results equal the unfused composition up to f32 rounding.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/dropout_run.h"
#include "backend/cpu/target_clones.h"

namespace lowrank::cpu {
namespace {

// Elements of x a block: its dropout(x) (64 KiB) and mask stay in L2 from the draw to the GEMMs.
constexpr int64_t kBlockElems = 16384;

struct Shrink {
  int64_t n, in, r, rows;  // rows: a block's
  uint64_t offset;         // x's first draw
  float keep;
  int64_t blocks() const { return (n + rows - 1) / rows; }
};

Shrink shrink_shape(const Tensor& x, const DropoutDraws& d, const Tensor& A, const char* op) {
  for (const Tensor* t : {&x, &A})
    LR_CHECK(t->defined() && t->dtype() == DType::F32 && t->rank() == 2, op, ": f32 [rows, cols] expected, got ",
             t->defined() ? t->str() : "undefined");
  LR_CHECK(A.dim(1) == x.dim(1), op, ": x ", x.str(), " with A ", A.str());
  LR_CHECK(d.p >= 0.0 && d.p < 1.0, op, ": dropout p ", d.p);
  Shrink s{x.dim(0), x.dim(1), A.dim(0), std::max<int64_t>(1, kBlockElems / std::max<int64_t>(1, x.dim(1))),
           d.offset, static_cast<float>(1.0 - d.p)};  // keep as lora_hook computes it
  if (d.device_offset.defined()) s.offset += static_cast<uint64_t>(d.device_offset.data<int64_t>()[0]);
  return s;
}

// dx = kept ? dx / keep : 0, in place: dropout's backward of a written gradient (dropout() of it).
LOWRANK_CPU_CLONES void mask_in_place(float* __restrict dx, const uint8_t* __restrict mask, int64_t n, float keep) {
  for (int64_t i = 0; i < n; ++i) dx[i] = mask[i] ? dx[i] / keep : 0.0f;
}

// dx += kept ? gx / keep : nothing, as dropout_backward_add_ adds.
LOWRANK_CPU_CLONES void add_masked(float* __restrict dx, const float* __restrict gx, const uint8_t* __restrict mask,
                                   int64_t n, float keep) {
  for (int64_t i = 0; i < n; ++i) dx[i] = mask[i] ? dx[i] + gx[i] / keep : dx[i];
}

void shrink_whole(const Tensor& x, const DropoutDraws& d, const Tensor& A, Tensor& h) {
  const Shrink s = shrink_shape(x, d, A, "dropout_shrink");
  if (!h.defined() || h.rank() != 2 || h.dim(0) != s.n || h.dim(1) != s.r) h = Tensor::empty({s.n, s.r});
  LR_CHECK(h.dtype() == DType::F32, "dropout_shrink: h ", h.str());
  if (s.n == 0 || s.r == 0) return;
  const float *xs = x.f32(), *a = A.f32();
  float* hs = h.f32();
#pragma omp parallel if (s.n * s.in > 65536)
  {
    std::vector<float> x_drop(s.rows * s.in);
    std::vector<uint8_t> mask(s.rows * s.in);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.blocks(); ++b) {
      const int64_t r0 = b * s.rows, rows = std::min(s.rows, s.n - r0);
      dropout_run(d.seed, s.offset + static_cast<uint64_t>(r0 * s.in), xs + r0 * s.in, x_drop.data(), mask.data(),
                  rows * s.in, s.keep);
      // h rows = dropout(x rows) · Aᵀ  (one thread each: OpenBLAS runs single-threaded inside a region)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, s.r, s.in, 1.0f, x_drop.data(), s.in, a, s.in, 0.0f,
                  hs + r0 * s.r, s.r);
    }
  }
}

void shrink_backward_whole(const Tensor& x, const DropoutDraws& d, const Tensor& g, const Tensor& A, Tensor& dA,
                           float alpha, Tensor* dx, bool accumulate) {
  const Shrink s = shrink_shape(x, d, A, "dropout_shrink_backward");
  LR_CHECK(g.defined() && g.dtype() == DType::F32 && g.rank() == 2 && g.dim(0) == s.n && g.dim(1) == s.r,
           "dropout_shrink_backward: g ", g.defined() ? g.str() : "undefined", " for x ", x.str(), ", A ", A.str());
  // dA may take only the first rows of the gradient (a padded rank's zero rows are not its own);
  // undefined, none (dx alone).
  const int64_t da_rows = dA.defined() && s.in > 0 ? dA.numel() / s.in : 0;
  LR_CHECK(!dA.defined() || (dA.dtype() == DType::F32 && dA.numel() == da_rows * s.in && da_rows <= s.r),
           "dropout_shrink_backward: dA ", dA.str(), " for A ", A.str());
  if (dx && !accumulate && (!dx->defined() || dx->rank() != 2 || dx->dim(0) != s.n || dx->dim(1) != s.in))
    *dx = Tensor::empty({s.n, s.in});
  if (dx)
    LR_CHECK(dx->defined() && dx->dtype() == DType::F32 && dx->rank() == 2 && dx->dim(0) == s.n &&
                 dx->dim(1) == s.in,
             "dropout_shrink_backward: dx ", dx->defined() ? dx->str() : "undefined", " for x ", x.str());
  if (s.n == 0 || s.r == 0 || s.in == 0) {
    if (dx && !accumulate) dx->zero_();
    return;
  }
  const float *xs = x.f32(), *gs = g.f32(), *a = A.f32();
  float* dxs = dx ? dx->f32() : nullptr;
  // Each thread sums gᵀ dropout(x) over its blocks (one contiguous run of them) into a partial
  // [r, in] of its own; the partials are added in thread order: the same sums every run.
  const int64_t size = da_rows * s.in;
  const bool parallel = s.n * s.in > 65536;
  std::vector<float> partials(static_cast<size_t>(parallel ? omp_get_max_threads() : 1) * size, 0.0f);
  int threads = 1;
#pragma omp parallel if (parallel)
  {
#pragma omp single
    threads = omp_get_num_threads();
    float* part = partials.data() + omp_get_thread_num() * size;
    std::vector<float> x_drop(s.rows * s.in);  // then a block's g A, once dA has read dropout(x)
    std::vector<uint8_t> mask(s.rows * s.in);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < s.blocks(); ++b) {
      const int64_t r0 = b * s.rows, rows = std::min(s.rows, s.n - r0), count = rows * s.in;
      const float* gb = gs + r0 * s.r;
      dropout_run(d.seed, s.offset + static_cast<uint64_t>(r0 * s.in), xs + r0 * s.in, x_drop.data(), mask.data(),
                  count, s.keep);
      // part += g rowsᵀ · dropout(x rows)   [r, in]
      if (da_rows > 0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, da_rows, s.in, rows, 1.0f, gb, s.r, x_drop.data(), s.in,
                    1.0f, part, s.in);
      if (!dxs) continue;
      float* dxb = dxs + r0 * s.in;
      if (accumulate) {  // dx rows += mask ⊙ (alpha · g rows A) / keep
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, s.in, s.r, alpha, gb, s.r, a, s.in, 0.0f,
                    x_drop.data(), s.in);
        add_masked(dxb, x_drop.data(), mask.data(), count, s.keep);
      } else {  // dx rows = alpha · g rows A, then masked in place
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, s.in, s.r, alpha, gb, s.r, a, s.in, 0.0f, dxb,
                    s.in);
        mask_in_place(dxb, mask.data(), count, s.keep);
      }
    }
  }
  // dA += alpha · Σ partials, the partials summed in thread order.
  if (size == 0) return;
  float* da = dA.f32();
#pragma omp parallel for schedule(static) if (parallel && size * threads > 65536)
  for (int64_t i = 0; i < size; ++i) {
    float sum = partials[i];
    for (int t = 1; t < threads; ++t) sum += partials[t * size + i];
    da[i] += alpha * sum;
  }
}

// The block of columns as a tensor of its own: the block's tensor itself when it is all of it.
Tensor columns_of(const ColumnBlock& b) {
  if (b.col == 0 && b.width == b.t.dim(1)) return b.t;
  Tensor t = Tensor::empty({b.t.dim(0), b.width}, b.t.dtype(), b.t.device());
  copy_columns_(t, 0, b.t, b.col, b.width);
  return t;
}

// Writes t [rows, width] into the block (nothing to do when t is the block's tensor).
void write_columns(const ColumnBlock& b, const Tensor& t) {
  if (t.raw() == b.t.raw()) return;
  Tensor dst = b.t;
  copy_columns_(dst, b.col, t, 0, b.width);
}

}  // namespace

// Column blocks are gathered into tensors of their own and written back: the CPU is the reference
// (the K-extension that reads and writes them in place is the GPU's).
void dropout_shrink(const ColumnBlock& x, const DropoutDraws& d, const Tensor& A, const ColumnBlock& h, float alpha) {
  Tensor hs = columns_of(h);
  shrink_whole(columns_of(x), d, A, hs);
  if (alpha != 1.0f) scale_(hs, alpha);
  write_columns(h, hs);
}

void dropout_shrink_backward(const ColumnBlock& x, const DropoutDraws& d, const ColumnBlock& g, const Tensor& A,
                             Tensor& dA, float alpha, const ColumnBlock* dx, bool accumulate) {
  Tensor dxs = dx ? columns_of(*dx) : Tensor();
  shrink_backward_whole(columns_of(x), d, columns_of(g), A, dA, alpha, dx ? &dxs : nullptr, accumulate);
  if (dx) write_columns(*dx, dxs);
}

}  // namespace lowrank::cpu
