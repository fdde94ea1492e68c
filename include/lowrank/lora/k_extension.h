#pragma once
// LoRA's K-extension (GPU training): the expand of a shared-input group (q, k, v; gate, up:
// shared_input.h) folded into each member's frozen GEMM by widening its K,
//   y = x Wᵀ + s·h Bᵀ = [x | s·h] · [W | 0 … B … 0]ᵀ,
// one GEMM where there were two. x_ext [N, in + R] holds the norm's output in its first `in`
// columns (the norm writes it there: ops::rmsnorm's `into`; the model hands x_ext to the
// projections as their x) and the group's s·h in the rest (the group's shrink writes it there).
// Each member keeps W_ext [out, in + R]: a copy of its frozen W, its B in its own block of R
// (LoraPair::ext_col), zeros in the other members' blocks; AdamW rounds B's update into that block
// in the same pass as into B_work. The backward is the mirror image: the members' input-grad GEMMs
// over W_ext give [dx | g] (g = dy B, each member's block) in one product each, then dA = s gᵀ x
// and dx += s g A; the norm's backward reads dx out of the wider matrix.
// What it saves: the expands' write of y [N, out] and the frozen GEMM's read of it, and the g
// GEMMs' second read of dy. Training, all-linear r = 16, same call (bench/RESULTS.md 2026-12-03
// 10:39 UTC), tokens/s: base7m +8%, base120m +6%, Qwen-0.5B +4%, Llama-1B +1%. What it costs: a
// copy of the adapted frozen weights (Llama-1B: 14.8 instead of 13.3 GiB peak; base7m 0.69
// instead of 0.67). At 8B it would lose (bench_cuda_ops --k-extension: a K of 4,096 + R no longer
// fills whole tiles).
// q, k and v go further: their W_ext are row blocks of one W_ext_stacked [q + 2·kv, in + R] (a
// projection that is no member, k of a q, v adapter, holds its frozen weight there without LoRA
// columns), so the hook computes them as one product into [N, q + 2·kv]
// (LoraHook::stacked_projection), the model runs RoPE and attention on its column blocks, and the
// backward's [dx | g] is one product over their packed gradient (LOWRANK_PACKED_QKV=0: one by one).
// With LoRA dropout each member's shrink draws its own mask and writes its own block of x_ext (a
// fused dropout shrink a member: ops::dropout_shrink on column blocks), and its backward reads its
// block of g out of [dx | g] (shared_input.h).
// Taken where it applies: CUDA, bf16 working copies, plain LoRA, one scale per group, one active
// adapter, inputs of width <= 2048 (LOWRANK_K_EXTENSION=0 turns it off, =1 takes it at any width).
// The output side, for the projections that write the residual stream (o, down): their input
// gradient dx = dy W + s·g A as one GEMM of K = out + R,
//   dx = [dy | s·g] · [W; A],
// where dy lives in the first `out` columns of a wider buffer (the norm's backward that makes the
// residual stream's gradient writes it there: TrainableHook::extended_output_grad), g' = s·dy B goes
// into its last R columns, and W_dx_ext = [W; A_work] [out + R, in] is a copy of the frozen weight
// with A's rows below it (AdamW writes them with A_work). It saves writing s·g A into dx [N, in]
// first and the GEMM's read of it (bench_cuda_ops --dx-extension, one H200, µs a layer alone:
// Qwen-0.5B o 35 → 28, down 137 → 112; base120m down 60 → 46; Llama-1B down 430 → 421). Not with
// LoRA dropout (its mask falls on s·g A), a trained bias on o/down, LayerNorm or sandwich norms;
// the same width rule on `out`; LOWRANK_DX_EXTENSION=0 turns only this side off.
#include <cstdint>

#include "lowrank/core/tensor.h"

namespace lowrank::model {
class Model;
}

namespace lowrank::lora {

class Adapter;

// Whether LoRA's K-extension is taken for inputs of `width` on `device`.
bool k_extension_applies(int64_t width, Device device);

// Makes LoraPair::W_ext (and ext_col) for every shared-input group of `adapter` where the
// K-extension applies, and W_dx_ext (and A_ext_rows) for its o and down pairs where the output side
// does, from `model`'s frozen weights and the pairs' working copies (made first:
// Adapter::make_working_copies); clears them elsewhere.
void make_extended_weights(Adapter& adapter, const model::Model& model);

}  // namespace lowrank::lora
