#pragma once
// lora_linear: the one chokepoint every adapted projection goes through.
//   y = x W0ᵀ + b + Σ_adapters s_i · u_i · (drop(x) A_iᵀ) B_iᵀ      (u_i: the user's --adapter scale)
// Several adapters can be active at once, unmerged, without copying base weights. When training,
// the first adapter's A/B (and biases) get gradients (DESIGN.md, "Backward"):
//   h = drop(x)Aᵀ; g = dy B; dB += s·dyᵀh; dA += s·gᵀdrop(x); dx += s·(g A) ⊙ mask.
#include <map>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/model/backward.h"

namespace lowrank::lora {

struct ActiveAdapter {
  Adapter* adapter;
  double user_scale = 1.0;
};

class LoraHook : public model::TrainableHook {
 public:
  explicit LoraHook(std::vector<ActiveAdapter> adapters);

  // Training mode: saves what backward needs; applies dropout with masks drawn from `rng`.
  void set_training(bool training, Rng* dropout_rng = nullptr);
  void on_projection(int layer, Target target, const Tensor& x, Tensor& y) override;
  void on_projection_backward(int layer, Target target, const Tensor& x, const Tensor& dy, Tensor& dx) override;
  int lowest_trainable_layer() const override;
  void set_replay(bool replay) override { replay_ = replay; }
  // Drops the activations saved by the last forward pass.
  void clear_saved() { saved_.clear(); }

 private:
  struct Saved {
    Tensor h;      // [N, r]: drop(x) Aᵀ
    Tensor A, B;   // [r, in], [out, r]: A and B as the forward used them (activations' dtype)
    Tensor x_drop; // [N, in]: drop(x) (only when dropout is active)
    Tensor mask;   // U8 [N*in]: 1 where x was kept
    uint64_t drop_offset = 0;  // dropout draws started here (replayed by checkpointing)
  };
  std::vector<ActiveAdapter> adapters_;
  bool training_ = false;
  bool replay_ = false;
  Rng* rng_ = nullptr;
  std::map<std::pair<int, int>, Saved> saved_;  // (layer, target) of the trained adapter
};

}  // namespace lowrank::lora
