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

void LoraHook::on_projection(int layer, Target target, const Tensor& x, Tensor& y) {
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  for (size_t i = 0; i < adapters_.size(); ++i) {
    const Adapter& ad = *adapters_[i].adapter;
    const bool trained = training_ && i == 0;
    const LoraPair* p = ad.find(layer, target);
    if (!p) continue;
    const float s = static_cast<float>(p->scale * adapters_[i].user_scale);
    const auto key = std::pair{layer, static_cast<int>(target)};
    Tensor xin = x;
    Tensor mask;
    uint64_t offset = 0;
    if (trained && ad.config.dropout > 0) {
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
      const Saved& first = saved_.at(key);
      A = first.A;
      B = first.B;
    } else if (p->A_work.defined() && p->A_work.dtype() == x.dtype()) {  // kept by the optimizer
      A = p->A_work;
      B = p->B_work;
    } else {
      A = ops::cast(p->A, x.dtype());
      B = ops::cast(p->B, x.dtype());
    }
    Tensor h;
    ops::matmul_nt(xin, A, h);          // [N, r]
    ops::matmul_nt(h, B, y, s, 1.0f);   // y += s · h Bᵀ (accumulated into the base output)
    if (trained) {
      Saved& sv = saved_[key];
      sv.h = h;
      sv.A = A;
      sv.B = B;
      if (mask.defined()) {
        sv.x_drop = xin;
        sv.mask = mask;
        sv.drop_offset = offset;
      }
    }
  }
}

void LoraHook::on_projection_backward(int layer, Target target, const Tensor& x, const Tensor& dy, Tensor& dx) {
  if (adapters_.empty()) return;
  const profile::Scope scope(profile::Category::Lora, /*sticky=*/true);
  Adapter& ad = *adapters_[0].adapter;
  for (auto& b : ad.biases)
    if (b.layer == layer && b.target == target) ops::bias_grad_(b.grad, dy);
  LoraPair* p = ad.find(layer, target);
  if (!p) return;
  auto it = saved_.find({layer, static_cast<int>(target)});
  LR_CHECK(it != saved_.end(), "no saved LoRA activations for layer ", layer, " ", target_short_name(target));
  const Saved& sv = it->second;
  const float s = static_cast<float>(p->scale * adapters_[0].user_scale);
  ops::matmul_tn(dy, sv.h, p->grad_B, s, 1.0f);  // dB += s · dyᵀ h       [out, r]
  Tensor g;
  ops::matmul_nn(dy, sv.B, g);                    // g = dy B             [N, r]
  const Tensor& xd = sv.x_drop.defined() ? sv.x_drop : x;
  ops::matmul_tn(g, xd, p->grad_A, s, 1.0f);     // dA += s · gᵀ drop(x) [r, in]
  if (!dx.defined()) return;                      // nothing below needs the input gradient
  if (!sv.x_drop.defined()) {
    ops::matmul_nn(g, sv.A, dx, s, 1.0f);        // dx += s · g A
    return;
  }
  Tensor gx;
  ops::matmul_nn(g, sv.A, gx, s);
  ops::dropout_backward_add_(dx, gx, sv.mask, ad.config.dropout);
}

}  // namespace lowrank::lora
