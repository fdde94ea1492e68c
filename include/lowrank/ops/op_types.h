#pragma once
// Small value types shared by the op declarations (ops.h) and the backends that implement them.
#include <cmath>
#include <cstdint>
#include <vector>

#include "lowrank/core/tensor.h"

namespace lowrank::ops {

// RoPE applied to outputs of ops::norm_linears (as rope_ would after it): positions I32 [M], the
// f32 cos/sin tables [P, head_dim / 2] (no partial rotary), and per output its number of heads
// (0: not rotated).
struct RotaryRows {
  Tensor pos, cos, sin;
  std::vector<int64_t> heads;
};

// Pool rows that ops::norm_linears also writes its second and third outputs (k and v, after RoPE)
// into, as paged_kv_write_(k_pool, v_pool, k, v, slots) would after it: pools [pool rows, N_k] in
// the activations' dtype, slots I32 [M] (-1: a padding row, not written). One launch fewer a
// decode layer on CUDA.
struct KVWrite {
  Tensor k_pool, v_pool, slots;
};

// A low-rank update of one output of the fused decode projections (norm_linears, norm_swiglu,
// linear_residual), added where a LoRA hook adds it after the unfused linear (after the bias,
// before RoPE, SwiGLU and the residual): h = linear(xn, A) (the op's normed input times Aᵀ,
// rounded to its dtype), then y = scale · h Bᵀ + y rounded once, as matmul_nt(h, B, y, scale, 1).
// A [r, d], B [N, r]. An undefined A: no update for that output. (Also the model's description of
// a projection hook's effect on one decode row, model::LowRankUpdate.)
struct LowRankUpdate {
  Tensor A, B;
  float scale = 0;
};

// One pre-norm decoder layer of ops::decode_stack (Llama / Qwen2 / Mistral style: RMSNorm, RoPE
// over whole heads, GQA, SwiGLU). d: the model width, I: the MLP width, H / KV query / KV heads of
// head_dim hd.
struct DecodeLayer {
  Tensor attn_norm, mlp_norm;              // [d] f32 or bf16
  Tensor q, k, v, o;                       // [H·hd, d], [KV·hd, d], [KV·hd, d], [d, H·hd]
  Tensor q_bias, k_bias, v_bias;           // [H·hd], [KV·hd], [KV·hd] or undefined
  Tensor gate, up, down;                   // [I, d], [I, d], [d, I]
  LowRankUpdate lora[7];                   // q, k, v, o, gate, up, down (an undefined A: none)
  Tensor cos, sin;                         // RoPE tables f32 [P, hd / 2]
  Tensor k_pool, v_pool;                   // the layer's paged cache [pool rows, KV·hd]
  int64_t window = 0;                      // sliding window (0: full causal)
};

// The one row of a decode step through ops::decode_stack: its position, the pool row its keys and
// values go to, and its sequence's block table (as paged_kv_write_ / paged_attention take them).
struct DecodeRow {
  Tensor pos;    // I32 [1]
  Tensor slot;   // I32 [1]
  Tensor table;  // I32 [1, max_blocks]
  Tensor len;    // I32 [1]: pos + 1
  int64_t block_size = 0, max_len = 0;  // max_len >= len (sizes the attention's key splits)
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  float eps = 0, scale = 0, softcap = 0;
};

struct AttentionShape {
  int64_t batch = 1, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // sliding window (0 = full causal)
  float scale = 0;     // usually 1/sqrt(head_dim)
  float softcap = 0;   // scores → softcap · tanh(scores / softcap) before the softmax (Gemma 2); 0: none
  // Inside a ShapesVary scope (a server's prefills, evaluation) the CUDA forward takes kernels that
  // need no setup per (batch, seq): src/backend/cuda/attention_varying.cu. Same math.
};

// One attention score from q·k: scaled, then soft-capped when `softcap` > 0 (as transformers:
// (q·k · scale) / cap → tanh → · cap).
inline float attention_score(float dot, float scale, float softcap) {
  const float s = dot * scale;
  return softcap > 0 ? softcap * std::tanh(s / softcap) : s;
}

// The per-row table of lora_rows_ (segmented LoRA: one batch, an adapter per row). Adapter j is
// a[j] [r_j, in], b[j] [out, r_j] and scale[j]; an undefined a[j] (and b[j]) means adapter j does
// not adapt this projection. rows: I32 [n] on the op's device, row i's adapter j, or -1 for none.
// Ranks up to kLoraRowsMaxRank; any number of adapters.
struct LoraRows {
  std::vector<Tensor> a, b;
  std::vector<float> scale;
  Tensor rows;
};
constexpr int64_t kLoraRowsMaxRank = 1024;

// One run of consecutive rows [begin, end) that share adapter j of a LoraRows table (lora_runs_:
// a prefill's sequences, sorted by adapter, each run one GEMM pair).
struct LoraRun {
  int64_t begin = 0, end = 0;
  int32_t adapter = 0;
};

// The draws of one LoRA dropout, as ops::dropout takes them: element k of the input keeps when
// the draw at stream position offset + k (+ *device_offset, I64 [1] on the input's device, when
// defined) of `seed` is below keep = float(1 - p) (a 16-bit draw: lowrank/backend/philox.h), and
// is then divided by keep.
struct DropoutDraws {
  double p = 0;
  uint64_t seed = 0, offset = 0;
  Tensor device_offset;
};

enum class Act { SiLU, GeluTanh, GeluErf, ReLU };

// Columns [col, col + width) of a row-major 2-D tensor [rows, cols], as an operand or the output
// of matmul_blocks: matrices that live side by side in one wider one (LoRA's projections that
// share an input keep their [N, r] activations in one [N, Σr], so that one GEMM reads x once).
struct ColumnBlock {
  Tensor t;
  int64_t col = 0;
  int64_t width = 0;
  static ColumnBlock all(const Tensor& t) { return {t, 0, t.dim(1)}; }
};

// The three products of matmul_nt / matmul_nn / matmul_tn: y = x·wᵀ, x·w, xᵀ·w.
enum class Gemm { NT, NN, TN };

struct GemmDims {
  int64_t m, k, n;
};
// Checks that the block lies in its 2-D tensor (`op` names the caller in the message).
inline void check_column_block(const char* op, const ColumnBlock& b) {
  LR_CHECK(b.t.defined() && b.t.rank() == 2 && b.col >= 0 && b.width >= 0 && b.col + b.width <= b.t.dim(1), op,
           ": columns [", b.col, ", ", b.col + b.width, ") of ", b.t.defined() ? b.t.str() : "undefined");
}

// M, K, N of y[M,N] = op(x)·op(w) on blocks; checks that each block lies in its 2-D tensor and
// that the blocks fit each other.
inline GemmDims gemm_dims(Gemm layout, const ColumnBlock& x, const ColumnBlock& w, const ColumnBlock& y) {
  for (const ColumnBlock* b : {&x, &w, &y}) check_column_block("matmul_blocks", *b);
  GemmDims d{};
  switch (layout) {
    case Gemm::NT: d = {x.t.dim(0), x.width, w.t.dim(0)}; LR_CHECK(w.width == d.k, "matmul_blocks NT: K ", d.k, " vs ", w.width); break;
    case Gemm::NN: d = {x.t.dim(0), x.width, w.width}; LR_CHECK(w.t.dim(0) == d.k, "matmul_blocks NN: K ", d.k, " vs ", w.t.dim(0)); break;
    case Gemm::TN: d = {x.width, x.t.dim(0), w.width}; LR_CHECK(w.t.dim(0) == d.k, "matmul_blocks TN: K ", d.k, " vs ", w.t.dim(0)); break;
  }
  LR_CHECK(y.t.dim(0) == d.m && y.width == d.n, "matmul_blocks: output block [", y.t.dim(0), ", ", y.width,
           "] for [", d.m, ", ", d.n, "]");
  return d;
}

// The f32 scalars of one AdamW step, rounded where torch rounds them (see train/optimizer.cpp):
//   p = p * decay (if apply_decay); m = lerp(m, g, lerp_w); v = v * beta2 + one_minus_beta2 * g * g
//   p = p + neg_step * (m / (sqrt(v) / bc2_sqrt + eps))
struct AdamWScalars {
  float decay = 1.0f;            // 1 - lr * weight_decay
  bool apply_decay = false;      // false: p is not multiplied (torch skips mul_ when wd == 0)
  float lerp_w = 0.1f;           // 1 - beta1
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float bc2_sqrt = 1.0f;         // sqrt(1 - beta2^t)
  float eps = 1e-8f;
  float neg_step = 0.0f;         // -lr / (1 - beta1^t)
};

}  // namespace lowrank::ops
