// Dispatch of the fused decode projections.
#include "dispatch.h"
#include "lowrank/ops/ops.h"

namespace lowrank::ops {
namespace {

// A low-rank update of weight w [N, K] (an undefined A: none): A [r, K], B [N, r] on device d.
void check_update(const char* op, const LowRankUpdate& u, const Tensor& w, Device d, size_t i) {
  if (!u.A.defined()) return;
  LR_CHECK(u.A.rank() == 2 && u.B.rank() == 2 && w.rank() == 2 && u.A.dim(1) == w.dim(1) &&
               u.B.dim(1) == u.A.dim(0) && u.B.dim(0) == w.dim(0) && u.A.device() == d && u.B.device() == d,
           op, ": low-rank update ", i, " A ", u.A.str(), " B ", u.B.str(), " for weight ", w.str());
}

// `updates`: none, or one per output; each defined one A [r, d] (d: x's width), B [N_i, r] on x's device.
void check_updates(const char* op, const std::vector<LowRankUpdate>& updates, const Tensor& x,
                   const std::vector<const Tensor*>& ws) {
  if (updates.empty()) return;
  LR_CHECK(updates.size() == ws.size(), op, ": ", updates.size(), " low-rank updates for ", ws.size(), " outputs");
  for (size_t i = 0; i < updates.size(); ++i) {
    const LowRankUpdate& u = updates[i];
    if (!u.A.defined()) continue;
    LR_CHECK(u.A.rank() == 2 && u.A.dim(1) == x.dim(1), op, ": low-rank update ", i, " A ", u.A.str(), " for x ",
             x.str());
    check_update(op, u, *ws[i], x.device(), i);
  }
}

}  // namespace

std::vector<Tensor> norm_linears(const Tensor& x, const Tensor& norm_w, float eps, const std::vector<Tensor>& ws,
                                 const std::vector<Tensor>& bs, const RotaryRows* rope,
                                 const std::vector<LowRankUpdate>& updates, const KVWrite* kv) {
  LR_CHECK(!ws.empty() && ws.size() <= 3 && bs.size() == ws.size(), "norm_linears: ", ws.size(), " weights and ",
           bs.size(), " biases");
  LR_CHECK(!rope || rope->heads.size() == ws.size(), "norm_linears: RoPE heads for ", rope->heads.size(),
           " outputs, ", ws.size(), " weights");
  const Device d = detail::op_device("norm_linears", {&x, &norm_w, &ws[0], &bs[0]});
  std::vector<const Tensor*> outs{&ws[0]};
  for (size_t i = 1; i < ws.size(); ++i) {
    detail::op_device("norm_linears", {&x, &ws[i], &bs[i]});
    outs.push_back(&ws[i]);
  }
  if (rope) detail::op_device("norm_linears", {&x, &rope->pos, &rope->cos, &rope->sin});
  check_updates("norm_linears", updates, x, outs);
  if (kv) {
    detail::op_device("norm_linears", {&x, &kv->k_pool, &kv->v_pool, &kv->slots});
    LR_CHECK(ws.size() == 3 && ws[1].rank() == 2 && ws[2].shape() == ws[1].shape() && kv->k_pool.rank() == 2 &&
                 kv->k_pool.dim(1) == ws[1].dim(0) && kv->v_pool.shape() == kv->k_pool.shape() &&
                 kv->k_pool.dtype() == x.dtype() && kv->v_pool.dtype() == x.dtype() &&
                 kv->slots.dtype() == DType::I32 && kv->slots.numel() == x.dim(0),
             "norm_linears: k/v pools ", kv->k_pool.str(), " ", kv->v_pool.str(), " slots ", kv->slots.str(), " for ",
             ws.size(), " outputs of x ", x.str());
  }
  LR_DISPATCH(d, norm_linears(x, norm_w, eps, ws, bs, rope, updates, kv));
}

Tensor norm_swiglu(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w_gate, const Tensor& w_up,
                   const std::vector<LowRankUpdate>& updates) {
  const Device d = detail::op_device("norm_swiglu", {&x, &norm_w, &w_gate, &w_up});
  check_updates("norm_swiglu", updates, x, {&w_gate, &w_up});
  LR_DISPATCH(d, norm_swiglu(x, norm_w, eps, w_gate, w_up, updates));
}

Tensor linear_residual(const Tensor& x, const Tensor& w, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  const Device d = detail::op_device("linear_residual", {&x, &w, &res});
  check_updates("linear_residual", updates, x, {&w});
  LR_DISPATCH(d, linear_residual(x, w, res, updates));
}

Tensor paged_attention_residual(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool, const Tensor& block_tables,
                                const Tensor& lens, int64_t block_size, int64_t max_len, const AttentionShape& shape,
                                const Tensor& w_o, const Tensor& res, const std::vector<LowRankUpdate>& updates) {
  const Device d = detail::op_device("paged_attention_residual", {&q, &k_pool, &v_pool, &block_tables, &lens, &w_o, &res});
  LR_CHECK(q.rank() == 2 && w_o.rank() == 2 && w_o.dim(1) == q.dim(1) && res.rank() == 2 && res.dim(0) == q.dim(0) &&
               res.dim(1) == w_o.dim(0),
           "paged_attention_residual: q ", q.str(), " w_o ", w_o.str(), " res ", res.str());
  check_updates("paged_attention_residual", updates, q, {&w_o});
  LR_DISPATCH(d, paged_attention_residual(q, k_pool, v_pool, block_tables, lens, block_size, max_len, shape, w_o, res,
                                          updates));
}

Tensor decode_stack(const Tensor& x, const std::vector<DecodeLayer>& layers, const DecodeRow& row) {
  const Device d = detail::op_device("decode_stack", {&x, &row.pos, &row.slot, &row.table, &row.len});
  LR_CHECK(x.rank() == 2 && x.dim(0) == 1 && !layers.empty(), "decode_stack: x ", x.str(), " through ",
           layers.size(), " layers");
  for (const DecodeLayer& L : layers) {
    detail::op_device("decode_stack", {&x, &L.attn_norm, &L.mlp_norm, &L.q, &L.k, &L.v, &L.o, &L.gate, &L.up,
                                       &L.down, &L.cos, &L.sin, &L.k_pool, &L.v_pool});
    const Tensor* weights[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};  // DecodeLayer::lora's order
    for (size_t t = 0; t < 7; ++t) check_update("decode_stack", L.lora[t], *weights[t], d, t);
  }
  LR_DISPATCH(d, decode_stack(x, layers, row));
}

}  // namespace lowrank::ops
