// The fused decode projections on the CPU: their unfused compositions (the reference the CUDA
// kernels are checked against).
#include "cpu_ops.h"

namespace lowrank::cpu {
namespace {

// y = scale · (xn Aᵀ) Bᵀ + y for output i's update, when it has one.
void add_update(const std::vector<LowRankUpdate>& updates, size_t i, const Tensor& xn, Tensor& y) {
  if (i >= updates.size() || !updates[i].A.defined()) return;
  const LowRankUpdate& u = updates[i];
  matmul_nt(linear(xn, u.A, Tensor()), u.B, y, u.scale, 1.0f);
}

}  // namespace

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope,
                                 const std::vector<LowRankUpdate>& updates, const KVWrite* kv) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  std::vector<Tensor> ys;
  for (size_t i = 0; i < ws.size(); ++i) {
    ys.push_back(linear(xn, ws[i], bs[i]));
    add_update(updates, i, xn, ys[i]);
    if (rope && rope->heads[i] > 0) rope_(ys[i], rope->heads[i], rope->pos, rope->cos, rope->sin, false);
  }
  if (kv) {
    Tensor k_pool = kv->k_pool, v_pool = kv->v_pool;
    paged_kv_write_(k_pool, v_pool, ys[1], ys[2], kv->slots);
  }
  return ys;
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up,
                   const std::vector<LowRankUpdate>& updates) {
  const Tensor xn = rmsnorm(x, norm_w, eps);
  Tensor gate = linear(xn, w_gate, Tensor()), up = linear(xn, w_up, Tensor());
  add_update(updates, 0, xn, gate);
  add_update(updates, 1, xn, up);
  return swiglu(gate, up);
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  Tensor y = linear(x, w, Tensor());
  add_update(updates, 0, x, y);
  add_(y, res);
  return y;
}

Tensor paged_attention_residual(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                                const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& shape,
                                const Tensor& w_o, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  return linear_residual(paged_attention(q, k_pool, v_pool, block_tables, lens, block_size, max_len, shape), w_o, res,
                         updates);
}

// No one-launch path on the CPU: the model runs the layers op by op.
Tensor decode_stack(const Tensor&, const std::vector<DecodeLayer>&, const DecodeRow&) { return Tensor(); }

}  // namespace lowrank::cpu
