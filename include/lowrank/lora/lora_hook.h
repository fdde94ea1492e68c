#pragma once
// LoraHook: the one chokepoint every adapted layer goes through (projections, the lm_head and the
// token embedding). For each active adapter that adapts the layer it applies LoRA dropout, picks
// A and B in the activations' dtype, and hands the rest to the layer's variant (lora_variant.h):
//   y = x W0ᵀ + b + Σ_adapters variant_i(x; W0, A_i, B_i, s_i · u_i)   (u_i: the --adapter scale)
// Several adapters can be active at once, unmerged, without copying base weights. When training,
// the first adapter's tensors (and biases) get gradients.
#include <map>
#include <tuple>
#include <vector>

#include "lowrank/core/rng.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/lora_variant.h"
#include "lowrank/lora/shared_input.h"
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
  void on_projection(int layer, Target target, const model::Linear& base, const Tensor& x, Tensor& y) override;
  // Before when every active adapter of the projection is plain LoRA; None when none adapts it.
  model::HookOrder projection_order(int layer, Target target) const override;
  bool on_projection_before(int layer, Target target, const model::Linear& base, const Tensor& x,
                            const Tensor& residual, Tensor& y) override;
  // A training forward's x_ext for shared input `shared_input` of `layer` where its group has
  // K-extended weights (k_extension.h).
  Tensor extended_input(int layer, int shared_input, const Tensor& x) override;
  bool on_projection_input_only(int layer, Target target, const model::Linear& base, const Tensor& x) override;
  bool on_projection_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                              const Tensor& dy, Tensor* dx, bool dx_holds) override;
  // A K-extended group's backward, frozen input gradients included (SharedInputGroup::extended_backward).
  Tensor extended_inputs_backward(int layer, const Tensor& x, const std::vector<std::pair<Target, const Tensor*>>& dys,
                                  const Tensor* packed = nullptr, bool need_dx = true) override;
  // q, k, v as one product over the group's W_ext_stacked (k_extension.h; a frozen k of a q, v
  // adapter included) for a training forward of the trained adapter whose attention group has one
  // and trains no bias on q, k, v (a bias gradient reads a dense dy); LOWRANK_PACKED_QKV=0 turns it
  // off.
  Tensor stacked_projection(int layer, const Tensor& x) override;
  // The output side of the K-extension for o and down (k_extension.h): the trained adapter's
  // buffer [N, out + R] where the pair has W_dx_ext, and its backward: dB, g' = s·dy B into the
  // buffer's last R columns, dA, then dx = dy_ext · W_dx_ext in one GEMM.
  Tensor extended_output_grad(int layer, Target target, const Tensor& like) override;
  Tensor extended_output_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                                  const Tensor& dy_ext) override;
  void on_embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& x) override;
  void on_embedding_backward(const std::vector<int32_t>& ids, const Tensor& dx) override;
  int lowest_trainable_layer() const override;
  Tensor* saved_module_grad(Target target) override;
  void set_replay(bool replay) override { replay_ = replay; }
  void set_checkpointed_forward(bool on) override { checkpointed_ = on; }
  // Bytes of activations the hook holds for backward (saved inputs, masks, shrink outputs).
  size_t saved_bytes() const;
  void bind(model::ForwardCache* cache) override { bound_ = cache; }
  bool draws_randomness() const override;
  Rng* draw_rng() override { return draws_randomness() ? rng_ : nullptr; }
  void set_draw_delta(const Tensor& delta) override { draw_delta_ = delta; }
  // Drops the activations saved by the last forward pass.
  void clear_saved() { state() = ForwardState{}; }

 private:
  // *y += every active adapter's output for the layer; x: the layer input (ids for the embedding).
  // y null: a checkpointing replay that skips the projection's output (on_projection_input_only):
  // only the trained adapter's saves; false (nothing done) when its variant needs the output.
  // `before`: y is made by the first adapter's term [+ *residual] (HookOrder::Before); *whole is
  // then set when that term included the frozen product (K-extension).
  bool apply(int layer, Target target, const model::Linear& base, const Tensor& x,
             const std::vector<int32_t>* ids, Tensor* y, bool before = false, const Tensor* residual = nullptr,
             bool* whole = nullptr);
  // The trained adapter's gradients; its input gradient into *dx (added when `dx_holds`, else
  // written). Returns whether *dx received one.
  bool apply_backward(int layer, Target target, const model::Linear& base, const Tensor& x,
                      const std::vector<int32_t>* ids, const Tensor& dy, Tensor* dx, bool dx_holds);

  // The trained adapter's bias gradients of (layer, target) (bias = "all" / "lora_only").
  void bias_grads(int layer, Target target, const Tensor& dy);
  // The group of adapter i's LoRA layers that share x with `target` (shared_input.h), ready for
  // this forward pass; null when the layer is computed on its own.
  // `keep`: the backward will use it (a training forward that is not checkpointed, or a replay).
  SharedInputGroup* shared_group(size_t i, int layer, Target target, const Tensor& x, DType dtype, bool trained,
                                 bool keep);
  // Whether this training forward keeps layer's activations for the backward: a checkpointed
  // forward's decoder layers are replayed in backward, so it keeps nothing for them but their
  // dropout draws (the replay keeps the rest, one layer at a time).
  bool keeps_activations(int layer) const { return !(checkpointed_ && layer >= 0); }
  // The trained adapter's K-extended group of `shared_input` whose wide input is x, before its
  // backward; null when there is none.
  SharedInputGroup* extended_group(int layer, int shared_input, const Tensor& x);
  // The first draw position of (layer, target)'s dropout mask over x (`count` elements), saved for
  // its replay and backward: a replay's is its first forward's; otherwise the stream's next, or,
  // with one mask per input (LoraConfig::dropout_per_input), the position the first projection of
  // x's shared input took in this forward pass.
  uint64_t dropout_offset(int layer, Target target, const Tensor& x, uint64_t count, bool per_input);

  std::vector<ActiveAdapter> adapters_;
  bool training_ = false;
  bool replay_ = false;
  bool checkpointed_ = false;
  Rng* rng_ = nullptr;
  Tensor draw_delta_;  // I64 [1] on the device, added to dropout's draw positions (set_draw_delta)
  // What one forward pass saves for its backward: in the bound ForwardCache, else in own_.
  struct ForwardState : model::HookState {
    std::map<std::pair<int, int>, LoraSaved> saved;  // (layer, target) of the trained adapter
    std::map<std::tuple<size_t, int, int>, SharedInputGroup> groups;  // (adapter, layer, shared input)
    // dropout_per_input: the mask each (layer, shared input) drew for input x, and which of its
    // projections used it (a projection seen again is a new forward over a reused buffer)
    struct InputMask {
      const void* x = nullptr;
      uint64_t offset = 0;
      unsigned used = 0;
    };
    std::map<std::pair<int, int>, InputMask> input_masks;
  };
  ForwardState& state();
  const ForwardState& state() const { return const_cast<LoraHook*>(this)->state(); }
  ForwardState own_;
  model::ForwardCache* bound_ = nullptr;
};

}  // namespace lowrank::lora
