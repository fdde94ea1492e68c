#include "lowrank/lora/lora_hook.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"
#include "lowrank/ops/side_work.h"
#include "lowrank/lora/shared_input.h"
#include "lowrank/lora/rank_padding.h"

namespace lowrank::lora {

using ops::ColumnBlock;

LoraHook::LoraHook(std::vector<ActiveAdapter> adapters) : adapters_(std::move(adapters)) {}

void LoraHook::set_training(bool training, Rng* rng) {
  training_ = training;
  rng_ = rng;
  clear_saved();
}

LoraHook::ForwardState& LoraHook::state() {
  if (!bound_) return own_;
  if (!bound_->hook_state) bound_->hook_state = std::make_shared<ForwardState>();
  auto* st = dynamic_cast<ForwardState*>(bound_->hook_state.get());
  LR_CHECK(st, "a forward cache bound to a LoRA hook holds another hook's state");
  return *st;
}

size_t LoraHook::saved_bytes() const {
  size_t n = 0;
  auto add = [&n](const Tensor& t) { n += t.defined() ? t.nbytes() : 0; };
  for (const auto& [key, sv] : state().saved)
    for (const Tensor* t : {&sv.h, &sv.dora_scale, &sv.dora_out}) add(*t);
  for (const auto& [key, g] : state().groups) {
    add(g.h);
    add(g.g);
  }
  return n;
}

int LoraHook::lowest_trainable_layer() const {
  int lowest = 1 << 30;
  if (adapters_.empty()) return lowest;
  for (const auto& p : adapters_[0].adapter->pairs) lowest = std::min(lowest, p.layer);
  for (const auto& b : adapters_[0].adapter->biases) lowest = std::min(lowest, b.layer);
  for (const auto& s : adapters_[0].adapter->saved_modules) lowest = std::min(lowest, s.layer);
  return lowest;
}

Tensor* LoraHook::saved_module_grad(Target target) {
  if (adapters_.empty()) return nullptr;
  for (auto& s : adapters_[0].adapter->saved_modules)
    if (s.target == target && s.grad.defined()) return &s.grad;
  return nullptr;
}

void LoraHook::on_projection(int layer, Target target, const model::Linear& base, const Tensor& x, Tensor& y) {
  apply(layer, target, base, x, nullptr, &y);
}

model::HookOrder LoraHook::projection_order(int layer, Target target) const {
  bool any = false;
  for (const ActiveAdapter& a : adapters_) {
    const LoraPair* p = a.adapter->find(layer, target);
    if (!p) continue;
    if (p->kind != VariantKind::Linear) return model::HookOrder::After;
    any = true;
  }
  return any ? model::HookOrder::Before : model::HookOrder::None;
}

bool LoraHook::on_projection_before(int layer, Target target, const model::Linear& base, const Tensor& x,
                                    const Tensor& residual, Tensor& y) {
  bool whole = false;
  apply(layer, target, base, x, nullptr, &y, /*before=*/true, residual.defined() ? &residual : nullptr, &whole);
  LR_CHECK(y.defined(), "LoRA hook: no adapter of layer ", layer, " ", target_short_name(target), " wrote its output");
  return whole;
}

Tensor LoraHook::extended_input(int layer, int shared_input, const Tensor& x) {
  // Groups exist only for the trained adapter's training forwards (shared_group); another active
  // adapter would read the wide input on its own.
  if (!training_ || adapters_.size() != 1 || x.rank() != 2) return Tensor();
  const std::vector<LoraPair*> members = shared_input_members(*adapters_[0].adapter, layer, shared_input);
  if (members.empty()) return Tensor();
  const Tensor& w0 = members[0]->W_ext;
  for (const LoraPair* p : members)
    if (!p->W_ext.defined() || p->W_ext.dim(1) != w0.dim(1) || !(p->W_ext.device() == x.device()) ||
        p->W_ext.dtype() != x.dtype() || p->in != x.dim(1))
      return Tensor();
  return Tensor::empty({x.dim(0), w0.dim(1)}, x.dtype(), x.device());
}

bool LoraHook::on_projection_input_only(int layer, Target target, const model::Linear& base, const Tensor& x) {
  return apply(layer, target, base, x, nullptr, nullptr);
}

bool LoraHook::draws_randomness() const {
  // Only adapter 0 trains; dropout applies to its LoRA layers (none: bias-only training draws nothing).
  return training_ && !adapters_.empty() && adapters_[0].adapter->config.dropout > 0 &&
         !adapters_[0].adapter->pairs.empty();
}

void LoraHook::on_embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& x) {
  const model::Linear base{table, Tensor(), ""};
  const Tensor none;
  apply(-1, Target::Embed, base, none, &ids, &x);
}

bool LoraHook::apply(int layer, Target target, const model::Linear& base, const Tensor& x,
                     const std::vector<int32_t>* ids, Tensor* y, bool before, const Tensor* residual, bool* whole) {
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  if (!y) {  // decided before anything is drawn or saved: the projection may run in full instead
    const LoraPair* p = adapters_.empty() ? nullptr : adapters_[0].adapter->find(layer, target);
    if (p && training_ && (shared_input_of(target) >= 0 || !lora_variant(p->kind).saves_without_output()))
      return false;
  }
  // No output: nothing to add, only the trained adapter's saves (y's dtype is x's otherwise).
  const size_t count = y ? adapters_.size() : std::min<size_t>(training_ ? 1 : 0, adapters_.size());
  const DType dtype = y && !before ? y->dtype() : x.dtype();
  Tensor no_output;
  for (size_t i = 0; i < count; ++i) {
    const Adapter& ad = *adapters_[i].adapter;
    const bool trained = training_ && i == 0;
    const bool keep = trained && keeps_activations(layer);
    const LoraPair* p = ad.find(layer, target);
    if (!p) continue;
    if (SharedInputGroup* g = shared_group(i, layer, target, x, dtype, trained, keep)) {
      const int m = g->index_of(target);
      LR_CHECK(!(before && residual), "LoRA hook: a projection with a residual in a shared-input group");
      if (g->expand(m, *y, before) && whole) *whole = true;
      before = false;
      g->forward_done |= 1u << m;
      if (!g->trained && g->forward_done == g->all_members()) g->h = g->x_ext = Tensor();  // no backward reads them
      continue;
    }
    const auto key = std::pair{layer, static_cast<int>(target)};
    const LoraVariant& variant = lora_variant(p->kind);
    Tensor xin = x;
    uint64_t offset = 0;
    const bool dropped = trained && ad.config.dropout > 0 && !ids;  // PEFT applies no dropout to embeddings
    ops::DropoutDraws draws;
    if (dropped) {
      // Counter-based draws: element k uses draw offset + k, the same on every device. A replay
      // (checkpointing) reuses the first forward's offset, so it draws the same mask, and so does
      // the backward: drawing again costs less than a U8 mask per adapted projection kept until
      // backward (2 GB a step on Qwen-0.5B all-linear on the GPU; on the CPU, 7M all-linear, 96 MB
      // of a 1.57 GB peak at the same speed, since Philox is vectorised there).
      offset = dropout_offset(layer, target, x, static_cast<uint64_t>(x.numel()), ad.config.dropout_per_input);
      draws = {ad.config.dropout, rng_->seed(), offset, draw_delta_};
      // A variant that fuses the dropout applies these draws in its GEMMs: no dropout(x) in memory.
      if (!variant.fuses_dropout()) xin = ops::dropout(x, draws.p, draws.seed, offset, nullptr, draw_delta_);
    }
    // A and B in the activations' dtype (bf16 on the GPU: the GEMMs run on bf16 tensor cores, as
    // under torch.autocast): the optimizer's working copies when training, else rounded once per
    // forward pass (a replay rounds the same values again); kept for the backward.
    Tensor A, B;
    if (p->A_work.defined() && p->A_work.dtype() == dtype) {  // kept by the optimizer
      A = p->A_work;
      B = p->B_work;
    } else {
      A = ops::cast(p->A, dtype);
      B = ops::cast(p->B, dtype);
    }
    // Training on the GPU at a rank that is not a multiple of 8: the GEMMs' rank padded
    // (rank_padding.h; the optimizer's working copies already are).
    if (const int64_t rc = compute_rank(p->r, A.device()); trained && p->kind == VariantKind::Linear && rc != A.dim(0)) {
      A = padded(A, rc, A.dim(1), dtype);
      B = padded(B, B.dim(0), rc, dtype);
    }
    const LoraInput in{*p, base, xin, ids, A, B, static_cast<float>(p->scale * adapters_[i].user_scale), before,
                       residual, dropped && variant.fuses_dropout() ? &draws : nullptr};
    LoraSaved* sv = keep ? &state().saved[key] : nullptr;
    variant.forward(in, y ? *y : no_output, sv);
    before = false;  // the adapters after the first add to y
    if (sv) {
      sv->A = A;
      sv->B = B;
      sv->dropped = dropped;
    }
  }
  return true;
}

SharedInputGroup* LoraHook::shared_group(size_t i, int layer, Target target, const Tensor& x, DType dtype,
                                         bool trained, bool keep) {
  const int shared = shared_input_of(target);
  Adapter& ad = *adapters_[i].adapter;
  // Training forwards only: a group keeps state between its members' calls, and inference must stay
  // stateless (one hook serves concurrent generators). With dropout, a mask per member: a group
  // only for the K-extension's wide input (extended_input), where it saves the expands.
  const LoraPair* own = ad.find(layer, target);
  const bool dropped = ad.config.dropout > 0;
  if (!trained || shared < 0 || !x.defined() || (dropped && (!own || x.dim(1) == own->in))) return nullptr;
  auto& groups = state().groups;
  SharedInputGroup& g = groups[{i, layer, shared}];
  const int m = g.index_of(target);
  if (m >= 0 && g.x_data == x.raw() && !(g.forward_done & (1u << m)) && g.trained == keep) return &g;
  // A new forward pass (or a checkpointing replay): the group's shrink for this input.
  const std::vector<LoraPair*> pairs = shared_input_members(ad, layer, shared);
  if (pairs.empty()) {
    groups.erase({i, layer, shared});
    return nullptr;
  }
  g.members.clear();
  g.trained = keep;  // the backward uses only a group a training forward kept
  int64_t rows = 0;
  bool any_padded = false;  // members' blocks at the rank the GEMMs run at (rank_padding.h)
  for (LoraPair* p : pairs) {
    g.members.push_back({p->target, p, rows, static_cast<float>(p->scale * adapters_[i].user_scale), Tensor(), {}});
    const int64_t rc = compute_rank(p->r, x.device());
    any_padded |= rc != p->r;
    rows += rc;
  }
  const Tensor& stacked = pairs[0]->stacked_A_work;  // the optimizer's copies, already side by side
  const bool kept = std::all_of(pairs.begin(), pairs.end(),
                                [&](const LoraPair* p) { return p->A_work.defined() && p->A_work.dtype() == dtype; });
  if (kept && stacked_in(pairs, &LoraPair::A_work, stacked)) {
    g.A = stacked;
  } else {
    const int64_t in = pairs[0]->in;  // x may be wider (extended_input)
    g.A = any_padded ? Tensor::zeros({rows, in}, dtype, x.device()) : Tensor::empty({rows, in}, dtype, x.device());
    for (auto& mb : g.members) {
      const Tensor& a = kept ? mb.pair->A_work : mb.pair->A;
      Tensor block = g.A.slice_rows(mb.col, mb.col + a.dim(0));
      ops::cast_into_(block, a);
    }
  }
  for (auto& mb : g.members) {
    mb.B = kept ? mb.pair->B_work : ops::cast(mb.pair->B, dtype);
    if (const int64_t rc = compute_rank(mb.pair->r, x.device()); rc != mb.B.dim(1)) mb.B = padded(mb.B, mb.B.dim(0), rc, dtype);
  }
  // An x with room for h beside it (extended_input): the K-extension, when the members' weights
  // hold the B_work this forward uses and they share one s. Otherwise h of its own, x's first
  // columns read.
  const bool extended =
      kept && x.dim(1) == g.A.dim(1) + rows &&
      std::all_of(g.members.begin(), g.members.end(), [&](const SharedInputGroup::Member& mb) {
        return mb.pair->W_ext.defined() && mb.pair->W_ext.dim(1) == x.dim(1) && mb.scale == g.members[0].scale;
      });
  g.x_ext = extended ? x : Tensor();
  LR_CHECK(extended || !dropped, "LoRA hook: layer ", layer, "'s wide input without K-extended weights");
  g.one_mask = dropped && ad.config.dropout_per_input;
  if (dropped) {
    // Each member's draws, in member order (the order forward calls the projections in, so the
    // same masks as without the group); a replay (checkpointing) draws the first forward's again.
    const uint64_t count = static_cast<uint64_t>(x.dim(0) * g.A.dim(1));  // x's own elements
    for (auto& mb : g.members)
      mb.draws = {ad.config.dropout, rng_->seed(), dropout_offset(layer, mb.target, x, count, g.one_mask),
                  draw_delta_};
  }
  g.shrink(x);
  return &g;
}

uint64_t LoraHook::dropout_offset(int layer, Target target, const Tensor& x, uint64_t count, bool per_input) {
  ForwardState& st = state();
  const auto key = std::pair{layer, static_cast<int>(target)};
  if (replay_) return st.saved.at(key).drop_offset;
  uint64_t offset = rng_->offset();
  bool fresh = true;
  if (const int shared = per_input ? shared_input_of(target) : -1; shared >= 0) {
    ForwardState::InputMask& mask = st.input_masks[{layer, shared}];
    const unsigned bit = 1u << static_cast<int>(target);
    if (mask.x == x.raw() && !(mask.used & bit)) {
      offset = mask.offset;
      mask.used |= bit;
      fresh = false;
    } else {
      mask = {x.raw(), offset, bit};
    }
  }
  if (fresh) *rng_ = Rng(rng_->seed(), offset + count);
  st.saved[key].drop_offset = offset;  // what a replay (and the backward) draws again
  return offset;
}

bool LoraHook::on_projection_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                                      const Tensor& dy, Tensor* dx, bool dx_holds) {
  return apply_backward(layer, target, base, x, nullptr, dy, dx, dx_holds);
}

void LoraHook::on_embedding_backward(const std::vector<int32_t>& ids, const Tensor& dx) {
  const model::Linear base;
  const Tensor none;
  apply_backward(-1, Target::Embed, base, none, &ids, dx, nullptr, false);
}

SharedInputGroup* LoraHook::extended_group(int layer, int shared_input, const Tensor& x) {
  if (adapters_.empty()) return nullptr;
  ForwardState& st = state();
  auto it = st.groups.find({0, layer, shared_input});
  if (it == st.groups.end() || !it->second.trained || !it->second.x_ext.defined() ||
      it->second.x_ext.raw() != x.raw() || it->second.backward_done != 0)
    return nullptr;
  return &it->second;
}

Tensor LoraHook::stacked_projection(int layer, const Tensor& x) {
  static const bool on = [] {  // LOWRANK_PACKED_QKV=0: q, k, v one by one (A/B timing)
    const char* v = std::getenv("LOWRANK_PACKED_QKV");
    return !(v && std::string_view(v) == "0");
  }();
  if (!on || !training_ || adapters_.size() != 1 || x.rank() != 2) return Tensor();
  Adapter& ad = *adapters_[0].adapter;
  const std::vector<LoraPair*> members = shared_input_members(ad, layer, shared_input_of(Target::Q));
  if (members.empty() || !members[0]->W_ext_stacked.defined() || members[0]->W_ext_stacked.dim(1) != x.dim(1) ||
      std::any_of(ad.biases.begin(), ad.biases.end(), [&](const BiasParam& b) {
        return b.layer == layer && shared_input_of(b.target) == shared_input_of(Target::Q);
      }))
    return Tensor();
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);  // the frozen products included
  const bool keep = keeps_activations(layer);
  SharedInputGroup* g = shared_group(0, layer, members[0]->target, x, x.dtype(), /*trained=*/true, keep);
  if (!g || !g->x_ext.defined() || g->forward_done != 0) return Tensor();  // the members one by one
  const Tensor& w = members[0]->W_ext_stacked;  // [q + 2·kv, in + R]
  Tensor y = Tensor::empty({x.dim(0), w.dim(0)}, x.dtype(), x.device());
  ops::matmul_nt(x, w, y);
  if (members[0]->bias_stacked.defined()) ops::add_bias_(y, members[0]->bias_stacked);
  g->forward_done = g->all_members();
  if (!g->trained) g->h = g->x_ext = Tensor();  // no backward reads them
  return y;
}

Tensor LoraHook::extended_inputs_backward(int layer, const Tensor& x,
                                          const std::vector<std::pair<Target, const Tensor*>>& dys,
                                          const Tensor* packed, bool need_dx) {
  if (dys.empty()) return Tensor();
  SharedInputGroup* g = extended_group(layer, shared_input_of(dys[0].first), x);
  if (!g || (!packed && g->members.size() != dys.size())) return Tensor();
  LR_CHECK(!packed || (g->members[0].pair->W_ext_stacked.defined() &&
                       g->members[0].pair->W_ext_stacked.dim(0) == packed->dim(1)),
           "LoRA group of layer ", layer, ": packed gradients without its stacked weights");
  std::vector<ColumnBlock> member_dys;
  for (size_t i = 0; i < g->members.size(); ++i) {
    const LoraPair& p = *g->members[i].pair;
    if (packed) {  // each member's block at its rows of the stack (a frozen k's block between them)
      member_dys.push_back(ColumnBlock{*packed, p.stack_row, p.out});
      continue;
    }
    if (g->members[i].target != dys[i].first) return Tensor();
    member_dys.push_back(ColumnBlock::all(*dys[i].second));
  }
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);  // the frozen dy W_i included
  for (const auto& [target, dy] : dys) {
    if (!packed) bias_grads(layer, target, *dy);  // packed: no trained bias (stacked_projection)
    state().saved.erase({layer, static_cast<int>(target)});  // a dropout's offset: the group holds its draws
  }
  return g->extended_backward(x, member_dys, packed, need_dx);
}

Tensor LoraHook::extended_output_grad(int layer, Target target, const Tensor& like) {
  if (!training_ || adapters_.size() != 1 || like.rank() != 2) return Tensor();
  const LoraPair* p = adapters_[0].adapter->find(layer, target);
  if (!p || !p->W_dx_ext.defined() || !(p->W_dx_ext.device() == like.device()) ||
      p->W_dx_ext.dtype() != like.dtype() || p->out != like.dim(1))
    return Tensor();
  return Tensor::empty({like.dim(0), p->W_dx_ext.dim(0)}, like.dtype(), like.device());
}

Tensor LoraHook::extended_output_backward(int layer, Target target, const model::Linear& /*base*/, const Tensor& x,
                                          const Tensor& dy_ext) {
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);  // the frozen dy W included
  LoraPair* p = adapters_.empty() ? nullptr : adapters_[0].adapter->find(layer, target);
  ForwardState& st = state();
  const auto it = st.saved.find({layer, static_cast<int>(target)});
  LR_CHECK(p && p->W_dx_ext.defined() && it != st.saved.end() && !it->second.dropped &&
               dy_ext.dim(1) == p->W_dx_ext.dim(0) && it->second.B.dim(1) == p->W_dx_ext.dim(0) - p->out,
           "LoRA's output-side K-extension of layer ", layer, " ", target_short_name(target),
           " without its weights or its forward's saves");
  const LoraSaved& sv = it->second;
  const float scale = static_cast<float>(p->scale * adapters_[0].user_scale);
  const int64_t out = p->out, R = dy_ext.dim(1) - out;
  const ColumnBlock dy{dy_ext, 0, out}, g{dy_ext, out, R};
  const Device dev = dy_ext.device();
  {  // off the critical path (ops/side_work.h); it reads dy's columns while g's are written
    const ops::SideWork side(dev, {dy_ext, sv.h});
    ops::matmul_blocks(ops::Gemm::TN, dy, {sv.h, 0, p->r}, ColumnBlock::all(p->grad_B), scale, 1.0f);  // dB += s dyᵀh
  }
  ops::matmul_blocks(ops::Gemm::NN, dy, ColumnBlock::all(sv.B), g, scale, 0.0f);  // g' = s · dy B   [N, R]
  {
    const ops::SideWork side(dev, {dy_ext, x});
    ops::matmul_blocks(ops::Gemm::TN, {dy_ext, out, p->r}, ColumnBlock::all(x), ColumnBlock::all(p->grad_A), 1.0f,
                       1.0f);  // dA += g'ᵀ x
  }
  Tensor dx;
  ops::matmul_nn(dy_ext, p->W_dx_ext, dx);  // dx = dy W + g' A   [N, in]
  st.saved.erase(it);  // its last use
  return dx;
}

void LoraHook::bias_grads(int layer, Target target, const Tensor& dy) {
  for (auto& b : adapters_[0].adapter->biases)
    if (b.layer == layer && b.target == target) ops::bias_grad_(b.grad, dy);
}

bool LoraHook::apply_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                              const std::vector<int32_t>* ids, const Tensor& dy, Tensor* dx, bool dx_holds) {
  if (adapters_.empty()) return false;
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  Adapter& ad = *adapters_[0].adapter;
  bias_grads(layer, target, dy);
  LoraPair* p = ad.find(layer, target);
  if (!p) return false;
  ForwardState& st = state();
  if (auto g = st.groups.find({0, layer, shared_input_of(target)}); g != st.groups.end() && g->second.trained) {
    const int m = g->second.index_of(target);
    LR_CHECK(m >= 0, "LoRA group of layer ", layer, " lacks ", target_short_name(target));
    st.saved.erase({layer, static_cast<int>(target)});  // a dropout's offset: the group holds its draws
    return g->second.backward(m, x, dy, dx, dx_holds);
  }
  auto it = st.saved.find({layer, static_cast<int>(target)});
  LR_CHECK(it != st.saved.end(), "no saved LoRA activations for layer ", layer, " ", target_short_name(target));
  const LoraSaved& sv = it->second;
  const LoraVariant& variant = lora_variant(p->kind);
  const float scale = static_cast<float>(p->scale * adapters_[0].user_scale);
  ops::DropoutDraws draws;  // the forward's again, from its offset: the same mask
  if (sv.dropped) draws = {ad.config.dropout, rng_->seed(), sv.drop_offset, draw_delta_};
  // A decoder layer's inputs stay as they are until the backward joins its side work (the loss
  // block's lm_head logits do not: their buffer is reused chunk after chunk).
  const bool side_work = layer >= 0 && target != Target::LmHead;
  if (sv.dropped && variant.fuses_dropout()) {  // the variant applies them, straight into dx
    const LoraInput in{*p, base, x, ids, sv.A, sv.B, scale, false, nullptr, &draws, side_work};
    variant.backward(*p, in, sv, dy, dx, /*accumulate=*/dx_holds);
    st.saved.erase(it);
    return dx != nullptr;
  }
  // drop(x) again, bit for bit the forward's (x / keep where kept), with the mask when gx is to be
  // added through it.
  Tensor x_drop, mask;
  if (sv.dropped)
    x_drop = ops::dropout(x, draws.p, draws.seed, draws.offset, dx && dx_holds ? &mask : nullptr, draw_delta_);
  const Tensor& xin = x_drop.defined() ? x_drop : x;
  const LoraInput in{*p, base, xin, ids, sv.A, sv.B, scale, false, nullptr, nullptr, side_work};
  if (!dx || !x_drop.defined()) {  // nothing below needs dx, or no dropout: straight into dx
    variant.backward(*p, in, sv, dy, dx, /*accumulate=*/dx_holds);
  } else {
    Tensor gx;  // the gradient with respect to drop(x), then through the dropout mask
    variant.backward(*p, in, sv, dy, &gx, /*accumulate=*/false);
    if (dx_holds) ops::dropout_backward_add_(*dx, gx, mask, draws.p);
    // Written: gx ⊙ mask / keep is dropout(gx) with the forward's draws (same offset, same shape).
    else *dx = ops::dropout(gx, draws.p, draws.seed, draws.offset, nullptr, draw_delta_);
  }
  st.saved.erase(it);  // its last use: a layer's saved activations live no longer than its backward
  return dx != nullptr;
}

}  // namespace lowrank::lora
