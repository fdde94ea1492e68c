#pragma once
// LoraPair: the LoRA layer of one adapted module (a linear projection, the lm_head or the token
// embedding): its trainable tensors and which variant's math (lora_variant.h) computes with them.
#include <string>

#include "lowrank/core/tensor.h"
#include "lowrank/model/target.h"

namespace lowrank::lora {

// Which math a LoRA layer uses; each kind has its own file behind LoraVariant (lora_variant.h).
enum class VariantKind : uint8_t {
  Linear,     // y += s · drop(x) Aᵀ Bᵀ                                  (linear_lora.cpp)
  Dora,       // PEFT's use_dora: magnitude ⊙ normalised (W0 + s·B·A)      (dora.cpp)
  Embedding,  // x += s · Aᵀ[ids] Bᵀ, PEFT's lora_embedding_A / _B          (embedding_lora.cpp)
};

struct LoraPair {
  // Blocks' projections: layer 0..L-1. The token embedding is layer -1, the lm_head layer L, so
  // that "the lowest trained layer" orders them with the blocks.
  int layer = 0;
  Target target = Target::Q;
  VariantKind kind = VariantKind::Linear;
  std::string module;   // e.g. "model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"
  int64_t r = 0;
  int64_t in = 0, out = 0;  // the frozen layer's input and output sizes (embedding: vocab and d)
  double scale = 1.0;   // alpha / r (or alpha / sqrt(r))
  Tensor A;             // [r, in]  f32
  Tensor B;             // [out, r] f32
  Tensor grad_A, grad_B;  // same shapes, while training
  // Training on the GPU: bf16 copies of A and B that the GEMMs use, written by AdamW in the same
  // pass as the f32 masters (undefined otherwise: the hook rounds A and B per forward pass).
  Tensor A_work, B_work;
  // Plain LoRA layers that share an input (shared_input.h): A_work and grad_A are row blocks of
  // these [Σr, in] tensors, the same on every member of the group (undefined otherwise).
  Tensor stacked_A_work, stacked_grad_A;
  // LoRA's K-extension (k_extension.h): the frozen weight with the group's LoRA columns,
  // [out, in + R] (W, then B_work in columns [ext_col, ext_col + B_work's columns), zeros
  // elsewhere), written with B_work by AdamW; undefined where it does not apply.
  Tensor W_ext;
  int64_t ext_col = 0;
  // The attention group's q, k and v weights one above the other, [q + 2·kv, in + R]: each
  // member's W_ext a row block of it from stack_row, a projection that is no member (k of a q, v
  // adapter) its frozen weight without LoRA columns; the same tensor on every member. q, k, v as
  // one product forward and one input-grad GEMM (LoraHook::stacked_projection). Undefined for
  // other groups.
  Tensor W_ext_stacked;
  Tensor bias_stacked;  // [q + 2·kv]: the three frozen biases side by side (undefined: none)
  int64_t stack_row = 0;
  // Its output side (o, down: k_extension.h): the frozen weight with A's rows below it,
  // [out + R, in] (W, then A_work; R its rows), the input gradient's weight dx = [dy | s·g]·W_dx_ext;
  // A_ext_rows: rows [out, out + R) of it, where AdamW writes A_work's values too. Undefined where
  // it does not apply.
  Tensor W_dx_ext, A_ext_rows;
  Tensor magnitude, grad_magnitude;  // [out] f32: DoRA's lora_magnitude_vector (DoRA only)
  // PiSSA / OLoRA: the pair as initialised (the base weights became W0 - s·B0·A0); saving
  // subtracts it so that the written adapter applies to the original base (lora_init.h).
  Tensor A_init, B_init;  // [r, in], [out, r], or undefined

  // Forgets the copies made for one device's training (stacked, K-extended): a pair moved to
  // another device makes them again.
  void drop_device_copies() {
    stacked_A_work = stacked_grad_A = W_ext = W_ext_stacked = bias_stacked = W_dx_ext = A_ext_rows = Tensor();
  }
};

}  // namespace lowrank::lora
