// The paged KV cache ops on the CPU (f32): the reference the CUDA kernels are tested against.
// Decode attention follows model::cached_attention (kv_cache.cpp) with the pool rows found
// through the block table.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backend/cpu/attention_row.h"
#include "backend/cpu/cpu_ops.h"

namespace lowrank::cpu {

void paged_kv_write_(Tensor& k_pool, Tensor& v_pool, const Tensor& k, const Tensor& v, const Tensor& slots) {
  const int64_t n = k.dim(0), w = k.dim(1), rows = k_pool.dim(0);
  LR_CHECK(k.rank() == 2 && v.shape() == k.shape() && k_pool.rank() == 2 && k_pool.dim(1) == w &&
               v_pool.shape() == k_pool.shape() && slots.dtype() == DType::I32 && slots.numel() == n,
           "paged_kv_write_ shapes: pools ", k_pool.str(), " ", v_pool.str(), " rows ", k.str(), " ", v.str(),
           " slots ", slots.str());
  const int32_t* sp = slots.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (sp[i] == -1) continue;  // a padding row
    LR_CHECK(sp[i] >= 0 && sp[i] < rows, "paged_kv_write_: slot ", sp[i], " outside the pool of ", rows, " rows");
    std::memcpy(k_pool.f32() + sp[i] * w, k.f32() + i * w, w * sizeof(float));
    std::memcpy(v_pool.f32() + sp[i] * w, v.f32() + i * w, w * sizeof(float));
  }
}

Tensor paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                       const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& s) {
  const int64_t H = s.heads, KV = s.kv_heads, hd = s.head_dim, B = q.dim(0);
  LR_CHECK(q.rank() == 2 && q.dim(1) == H * hd && KV > 0 && H % KV == 0 && k_pool.rank() == 2 &&
               k_pool.dim(1) == KV * hd && v_pool.shape() == k_pool.shape() && block_size > 0,
           "paged_attention shapes: q ", q.str(), " pools ", k_pool.str(), " ", v_pool.str(), " heads ", H, "/", KV);
  LR_CHECK(block_tables.dtype() == DType::I32 && block_tables.rank() == 2 && block_tables.dim(0) == B &&
               lens.dtype() == DType::I32 && lens.numel() == B,
           "paged_attention: block_tables ", block_tables.str(), " lens ", lens.str(), " for ", B, " queries");
  const int64_t max_blocks = block_tables.dim(1), pool_rows = k_pool.dim(0), group = H / KV;
  const int32_t* tables = block_tables.data<int32_t>();
  const int32_t* lp = lens.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    LR_CHECK(lp[b] >= 1 && lp[b] <= max_len && lp[b] <= max_blocks * block_size, "paged_attention: length ", lp[b],
             " of sequence ", b, " (max_len ", max_len, ", ", max_blocks, " blocks of ", block_size, ")");
  Tensor out = Tensor::empty({B, H * hd});
  const float* kp = k_pool.f32();
  const float* vp = v_pool.f32();
  std::vector<float> p(max_len);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pos = lp[b] - 1;
    const int64_t j0 = s.window > 0 ? std::max<int64_t>(0, pos - s.window + 1) : 0;
    auto row_of = [&](int64_t j) {
      const int64_t r = int64_t(tables[b * max_blocks + j / block_size]) * block_size + j % block_size;
      LR_CHECK(r >= 0 && r < pool_rows, "paged_attention: block table of sequence ", b, " points outside the pool");
      return r;
    };
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / group;
      attention_row(
          q.f32() + b * H * hd + h * hd, hd, j0, pos, s, [&](int64_t j) { return kp + row_of(j) * KV * hd + kvh * hd; },
          [&](int64_t j) { return vp + row_of(j) * KV * hd + kvh * hd; }, p, out.f32() + b * H * hd + h * hd);
    }
  }
  return out;
}

Tensor argmax_rows(const Tensor& x) {
  LR_CHECK(x.rank() == 2 && x.dtype() == DType::F32, "argmax_rows x ", x.str());
  const int64_t n = x.dim(0), V = x.dim(1);
  Tensor out = Tensor::empty({n}, DType::I32);
  for (int64_t r = 0; r < n; ++r) {
    const float* row = x.f32() + r * V;
    out.data<int32_t>()[r] = static_cast<int32_t>(std::max_element(row, row + V) - row);
  }
  return out;
}

Tensor project_argmax(const Tensor& x, const Tensor& w, Tensor& ids) {
  LR_CHECK(x.rank() == 2 && w.rank() == 2 && ids.dtype() == DType::I32 && ids.numel() == x.dim(0),
           "project_argmax x ", x.str(), " w ", w.str(), " ids ", ids.str());
  Tensor y = Tensor::empty({x.dim(0), w.dim(0)}, DType::F32);
  matmul_nt(x, w, y);
  const Tensor picks = argmax_rows(y);
  std::copy_n(picks.data<int32_t>(), picks.numel(), ids.data<int32_t>());
  return y;
}

}  // namespace lowrank::cpu
