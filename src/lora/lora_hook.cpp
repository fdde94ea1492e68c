#include "lowrank/lora/lora_hook.h"

#include "lowrank/ops/ops.h"
#include "lowrank/ops/profile.h"

namespace lowrank::lora {

LoraHook::LoraHook(std::vector<ActiveAdapter> adapters) : adapters_(std::move(adapters)) {}

void LoraHook::set_training(bool training, Rng* rng) {
  training_ = training;
  rng_ = rng;
  saved_.clear();
}

int LoraHook::lowest_trainable_layer() const {
  int lowest = 1 << 30;
  if (adapters_.empty()) return lowest;
  for (const auto& p : adapters_[0].adapter->pairs) lowest = std::min(lowest, p.layer);
  for (const auto& b : adapters_[0].adapter->biases) lowest = std::min(lowest, b.layer);
  return lowest;
}

void LoraHook::on_projection(int layer, Target target, const model::Linear& base, const Tensor& x, Tensor& y) {
  apply(layer, target, base, x, nullptr, y);
}

void LoraHook::on_embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& x) {
  const model::Linear base{table, Tensor(), ""};
  const Tensor none;
  apply(-1, Target::Embed, base, none, &ids, x);
}

void LoraHook::apply(int layer, Target target, const model::Linear& base, const Tensor& x,
                     const std::vector<int32_t>* ids, Tensor& y) {
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  for (size_t i = 0; i < adapters_.size(); ++i) {
    const Adapter& ad = *adapters_[i].adapter;
    const bool trained = training_ && i == 0;
    const LoraPair* p = ad.find(layer, target);
    if (!p) continue;
    const auto key = std::pair{layer, static_cast<int>(target)};
    Tensor xin = x;
    Tensor mask;
    uint64_t offset = 0;
    if (trained && ad.config.dropout > 0 && !ids) {  // PEFT applies no dropout to embeddings
      // Counter-based draws: element k uses draw offset + k, the same on every device. A replay
      // (checkpointing) reuses the first forward's offset, so it draws the same mask.
      offset = replay_ ? saved_.at(key).drop_offset : rng_->offset();
      xin = ops::dropout(x, ad.config.dropout, rng_->seed(), offset, mask);
      if (!replay_) *rng_ = Rng(rng_->seed(), rng_->offset() + static_cast<uint64_t>(x.numel()));
    }
    // A and B in the activations' dtype (bf16 on the GPU: the GEMMs run on bf16 tensor cores, as
    // under torch.autocast): the optimizer's working copies when training, else rounded once per
    // forward pass; kept for the backward and a replay.
    Tensor A, B;
    if (trained && replay_) {
      const LoraSaved& first = saved_.at(key);
      A = first.A;
      B = first.B;
    } else if (p->A_work.defined() && p->A_work.dtype() == y.dtype()) {  // kept by the optimizer
      A = p->A_work;
      B = p->B_work;
    } else {
      A = ops::cast(p->A, y.dtype());
      B = ops::cast(p->B, y.dtype());
    }
    const LoraInput in{*p, base, xin, ids, A, B, static_cast<float>(p->scale * adapters_[i].user_scale)};
    LoraSaved* sv = trained ? &saved_[key] : nullptr;
    lora_variant(p->kind).forward(in, y, sv);
    if (sv) {
      sv->A = A;
      sv->B = B;
      if (mask.defined()) {
        sv->x_drop = xin;
        sv->mask = mask;
        sv->drop_offset = offset;
      }
    }
  }
}

void LoraHook::on_projection_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                                      const Tensor& dy, Tensor& dx) {
  apply_backward(layer, target, base, x, nullptr, dy, dx.defined() ? &dx : nullptr);
}

void LoraHook::on_embedding_backward(const std::vector<int32_t>& ids, const Tensor& dx) {
  const model::Linear base;
  const Tensor none;
  apply_backward(-1, Target::Embed, base, none, &ids, dx, nullptr);
}

void LoraHook::apply_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                              const std::vector<int32_t>* ids, const Tensor& dy, Tensor* dx) {
  if (adapters_.empty()) return;
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  Adapter& ad = *adapters_[0].adapter;
  for (auto& b : ad.biases)
    if (b.layer == layer && b.target == target) ops::bias_grad_(b.grad, dy);
  LoraPair* p = ad.find(layer, target);
  if (!p) return;
  auto it = saved_.find({layer, static_cast<int>(target)});
  LR_CHECK(it != saved_.end(), "no saved LoRA activations for layer ", layer, " ", target_short_name(target));
  const LoraSaved& sv = it->second;
  const Tensor& xin = sv.x_drop.defined() ? sv.x_drop : x;
  const LoraInput in{*p, base, xin, ids, sv.A, sv.B, static_cast<float>(p->scale * adapters_[0].user_scale)};
  const LoraVariant& variant = lora_variant(p->kind);
  if (!dx || !sv.x_drop.defined()) {  // nothing below needs dx, or no dropout: add straight into dx
    variant.backward(*p, in, sv, dy, dx, /*accumulate=*/true);
    return;
  }
  Tensor gx;  // the gradient with respect to drop(x), then through the dropout mask
  variant.backward(*p, in, sv, dy, &gx, /*accumulate=*/false);
  ops::dropout_backward_add_(*dx, gx, sv.mask, ad.config.dropout);
}

}  // namespace lowrank::lora
