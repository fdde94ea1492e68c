#pragma once
// A loaded decoder-only language model and its forward pass (CPU, f32).
#include <array>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "lowrank/core/tensor.h"
#include "lowrank/model/attention_cache.h"
#include "lowrank/model/target.h"
#include "lowrank/model/config.h"
#include "lowrank/model/kv_cache.h"
#include "lowrank/model/placement.h"
#include "lowrank/model/rope.h"
#include "lowrank/model/weights.h"
#include "lowrank/ops/op_types.h"

namespace lowrank::model {

// Lets LoRA (or anything else) add to a projection's output: called right after y = x Wᵀ + b with
// the frozen linear `base` it used (DoRA needs W0). The lm_head is target LmHead at layer
// num_layers; the token embedding calls on_embedding with the table and the ids it gathered.
// One low-rank update of a projection: y += scale · (x Aᵀ) Bᵀ, A [r, in] and B [out, r] in the
// activations' dtype on their device (undefined A: none); the fused decode ops take it as it is.
using LowRankUpdate = ops::LowRankUpdate;

// When the hook acts on a projection (ProjectionHook::projection_order).
enum class HookOrder {
  None,    // not at all: the projection is the frozen linear alone
  Before,  // on_projection_before writes y first; the frozen product is added into it by its GEMM
  After,   // on_projection, on the frozen output (DoRA reads it)
};

class ProjectionHook {
 public:
  virtual ~ProjectionHook() = default;
  virtual void on_projection(int layer, Target target, const Linear& base, const Tensor& x, Tensor& y) = 0;
  // For a decoder-layer projection (not the lm_head or the embedding), whether the hook acts
  // before the frozen product, after it, or not at all. Before saves a pass over y: the GEMM adds
  // x Wᵀ to what the hook wrote in its epilogue, instead of the hook reading and writing y again.
  virtual HookOrder projection_order(int layer, Target target) const { return HookOrder::After; }
  // Order Before: y = residual (when defined; o and down's residual stream) + the hook's additions,
  // a new tensor, in the activations' dtype (x's); then x Wᵀ + b is added to it. Returns true when
  // y already holds x Wᵀ too (extended_input below): only the bias is then added.
  virtual bool on_projection_before(int layer, Target target, const Linear& base, const Tensor& x,
                                    const Tensor& residual, Tensor& y) {
    return false;
  }
  // Before the norm whose output feeds projections `shared_input` of `layer` (0: q, k, v; 1: gate,
  // up): a [rows, d + R] buffer for the norm to write its output into (columns [0, d)), or
  // undefined. The projections then get that buffer as their x, wider than their input (the frozen
  // products read its first d columns); the hook computes them from it in one GEMM each, with its
  // own R columns beside x (LoRA's K-extension, src/lora/k_extension.h). `x`: the norm's input.
  virtual Tensor extended_input(int layer, int shared_input, const Tensor& x) { return Tensor(); }
  // q, k and v of `layer` from x (the extended input above) as one product, side by side in one
  // [rows, q + 2·kv] with biases added, when the hook computes them so (LoRA's stacked K-extended
  // q, k, v); undefined otherwise: the model then projects them one by one. The model then runs
  // RoPE and attention on the column blocks (ops::rope_columns_, attention_packed) and hands their
  // packed gradient back in the backward (TrainableHook::extended_inputs_backward's `packed`).
  virtual Tensor stacked_projection(int layer, const Tensor& x) { return Tensor(); }
  // The hook's whole effect on the one row of a decode step at projection (layer, target), when it
  // is a single LowRankUpdate (or none); false when it is anything else. The fused one-row decode
  // layers (Model::decode_layer) take a hook only when every block projection answers true.
  virtual bool low_rank_update(int layer, Target target, LowRankUpdate& update) const { return false; }
  // Activation checkpointing's replay skips the frozen GEMM of a projection whose output the backward
  // does not read (o and down: the residual stream after them is kept). The hook keeps what its own
  // backward needs from the input x alone and answers true; false (nothing done) when it needs the
  // output too (DoRA): the projection then runs in full.
  virtual bool on_projection_input_only(int layer, Target target, const Linear& base, const Tensor& x) {
    return false;
  }
  // x [n, d] holds rows `ids` of the frozen embedding table [V, d].
  virtual void on_embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& x) {}
};

// A batch of B sequences of equal length T, row-major [B, T].
struct TokenBatch {
  std::vector<int32_t> ids;  // [B*T]
  int64_t batch = 1;
  int64_t seq = 0;
  // Optional: ids and their positions (I32 [B*T]) already on the model's device, read instead of
  // uploading `ids` (a training step recorded as a CUDA graph reads fixed input buffers).
  Tensor device_ids{}, device_pos{};
  int64_t rows() const { return batch * seq; }
};

// What the backward pass of one layer needs from its forward pass.
struct LayerActivations {
  Tensor x_in;            // [N, d] residual stream entering the layer
  Tensor xn1;             // [N, d] attention-norm output (or [N, d + R], its first d columns: the
                          // hook's extended_input, LoRA's K-extension)
  Tensor norm1_mean, norm1_rstd;  // [N]
  Tensor q_raw, k_raw;    // [N, H*hd], [N, KV*hd] projections before q/k norm (qk_norm)
  Tensor q_rstd, k_rstd;  // [N*H], [N*KV] (qk_norm)
  Tensor q, k, v;         // after norm and RoPE: what attention consumed
  Tensor qkv;             // [N, q + 2·kv]: q, k, v side by side instead (ProjectionHook::stacked_projection;
                          // q, k, v undefined then)
  Tensor attn;            // [N, H*hd] attention output (o-projection input)
  Tensor lse;             // [B, H, T]
  Tensor o_out, post_attn_rstd;  // [N, d], [N] o-projection output and its norm's rstd (sandwich_norms)
  Tensor x_mid;           // [N, d] residual after attention
  Tensor xn2;             // [N, d] MLP-norm output (or wider, as xn1)
  Tensor norm2_mean, norm2_rstd;
  Tensor gate, up;        // [N, I] pre-activation (gate: gated MLPs only)
  Tensor act;             // [N, I] down-projection input
  Tensor down_out, post_mlp_rstd;  // [N, d], [N] down-projection output and its norm's rstd (sandwich_norms)
};

// What a trainable hook saves during one forward pass for its backward (LoRA: inputs after dropout,
// masks, shrink outputs). Owned by that pass's ForwardCache, so that a cache holds all of a pass's
// activations and several passes can be in flight through one hook (pipeline micro-batches).
struct HookState {
  virtual ~HookState() = default;
};

// What activation checkpointing keeps of a layer's forward pass: the residual stream entering the
// layer and after its attention block (2 [N, d] per layer; x_mid only without sandwich norms, whose
// post-norms need the projections' outputs). The backward replays the layer from them
// (LayerInput::kept), skipping the o and down projections, a third of a Llama layer's GEMM FLOPs.
LayerActivations checkpoint_kept(LayerActivations&& a, const ModelConfig& config);

struct ForwardCache {
  // Activation checkpointing: keep only each layer's checkpoint_kept; backward recomputes the rest.
  bool checkpointing = false;
  std::shared_ptr<HookState> hook_state;  // made by the hook bound to this pass (TrainableHook::bind)
  std::vector<LayerActivations> layers;
  Tensor x_final;                 // [N, d] residual stream before the final norm
  Tensor final_mean, final_rstd;  // [N]
  Tensor hidden;                  // [N, d] final-norm output (lm_head input)
};

// What one layer's forward needs besides its input.
struct LayerInput {
  int64_t batch = 1, seq = 0;
  int64_t start = 0;                      // position of the first token (KV-cached decoding)
  const Tensor* pos = nullptr;            // I32 [B*T] positions on the model's device, < the RoPE table size
  ProjectionHook* hook = nullptr;
  KVCache* kv = nullptr;
  bool save_lse = false;                  // keep attention's log-sum-exp for backward
  AttentionCache* attention = nullptr;    // keeps k/v and computes attention (instead of kv or ops::attention)
  // Activation checkpointing's replay: what the first pass kept of this layer (checkpoint_kept).
  // With x_mid kept, the o and down projections' frozen GEMMs are skipped (their outputs only feed
  // the residual stream) and the layer returns no output.
  const LayerActivations* kept = nullptr;
};

class Model {
 public:
  // Loads config.json (+ generation_config.json) and the safetensors weights of a model folder,
  // converted to `dtype` on `device` (f32 on the CPU; bf16 is the CUDA default for LoRA); the blocks'
  // projections quantized when `quantize` says so (weights.h).
  static Model load(const std::string& dir, Device device = Device::cpu(), DType dtype = DType::F32,
                    Quantization quantize = Quantization::None);
  // The same split over `devices` (pipeline parallel, placement.h): each layer's weights are read
  // straight onto its stage's device, layers balanced by parameter bytes.
  static Model load_split(const std::string& dir, const std::vector<Device>& devices, DType dtype,
                          Quantization quantize = Quantization::None);
  Model(ModelConfig config, ModelWeights weights, Device device = Device::cpu());
  // Weights already on the devices of `placement`.
  Model(ModelConfig config, ModelWeights weights, Placement placement);

  const ModelConfig& config() const { return config_; }
  // Gives a tied lm_head its own copy of the embedding's table, named "lm_head.weight", and
  // config tie_word_embeddings false (a merged model is then written untied).
  void untie_lm_head();
  ModelWeights& weights() { return weights_; }
  const ModelWeights& weights() const { return weights_; }
  const std::string& source() const { return source_; }
  Device device() const { return device_; }  // the first stage's (the embedding's)
  const Placement& placement() const { return placement_; }
  // The device of decoder layer `layer` (-1: the embedding, num_layers: the final norm and lm_head).
  Device layer_device(int64_t layer) const { return placement_.device_of_layer(layer); }

  // Final hidden states [B*T, d] (after the final norm). `cache` is filled for backward if given.
  // With `kv` (batch of one sequence), the tokens continue the cached sequence: they sit at
  // positions kv->length.., attend to the cache, and are appended to it.
  Tensor hidden_states(const TokenBatch& batch, ProjectionHook* hook = nullptr, ForwardCache* cache = nullptr,
                       KVCache* kv = nullptr) const;
  // The first layer's input [B*T, d]: token embeddings (with the hook's embedding LoRA), scaled
  // (Gemma), plus learned positions `pos` [B*T] (GPT-2). On the embedding's device.
  Tensor embed(const TokenBatch& batch, const std::vector<int32_t>& pos, ProjectionHook* hook = nullptr) const;
  // Final hidden states [B*T, d] of rows at the positions `pos` [B*T] (each sequence's T rows
  // consecutive), their keys and values kept by `attention`: the batched KV-cached forward of many
  // sequences at different positions (infer/batch_decoder.h). No backward. (cached_forward.cpp)
  Tensor hidden_states_at(const TokenBatch& batch, const std::vector<int32_t>& pos, ProjectionHook* hook,
                          AttentionCache& attention) const;
  // The same from ids and positions already on the model's device (I32 [B*T] each), nothing read
  // back: what a recorded decode graph runs (lowrank/core/device_graph.h). `max_pos` >= every
  // position (it picks the RoPE tables, which must already cover it). The hook is told no embedding
  // ids: a hook that adapts the embedding needs the overload above.
  Tensor hidden_states_at(const Tensor& ids, const Tensor& pos, int64_t batch, int64_t seq, int64_t max_pos,
                          ProjectionHook* hook, AttentionCache& attention) const;
  // One decoder layer: returns its output and fills `a` with what backward needs.
  Tensor layer_forward(int64_t layer, const Tensor& x, const LayerInput& in, LayerActivations& a) const;
  // Logits [B*T, V].
  Tensor logits(const TokenBatch& batch, ProjectionHook* hook = nullptr) const;
  // The lm_head projection of hidden states [n, d] -> [n, V] (with the hook's LmHead adapter;
  // soft-capped when the model does). `argmax`: each row's greedy pick written into it too (I32
  // [n], in place). One bf16 row on CUDA goes through ops::project_argmax, asked for a pick or not, so
  // that every one-row projection has the same logits.
  Tensor project_vocab(const Tensor& hidden, ProjectionHook* hook = nullptr, Tensor* argmax = nullptr) const;
  // The lm_head as the frozen linear hooks see (no bias; the embedding's tensor when tied).
  Linear lm_head_linear() const { return Linear{weights_.lm_head, Tensor(), "lm_head", Target::LmHead}; }

  // cos/sin tables (on the layer's device) of `layer`'s RoPE covering at least n positions, for a forward whose last
  // position is n - 1 (LongRoPE picks its factors by it). Grown on demand; thread-compatible, not
  // thread-safe.
  const RopeTables& rope(int64_t layer, int64_t n) const;
  // Whether a forward over positions [0, total) uses other RoPE tables than one over [0, cached):
  // LongRoPE switches to its long factors past original_max_position_embeddings, for every
  // position. A KV cache filled before the switch is then stale (transformers recomputes it).
  bool rope_changes(int64_t cached, int64_t total) const;
  // Norm of x by the model's norm kind (see norm.h).
  Tensor normalize(const Norm& n, const Tensor& x, Tensor* mean, Tensor* rstd,
                   const ops::ColumnBlock* into = nullptr) const;
  // hidden_states_at's layers: embedded rows x [B*T, d] at device positions pos [B*T].
  Tensor layers_at(Tensor x, const Tensor& pos, int64_t B, int64_t T, int64_t max_pos, ProjectionHook* hook,
                   AttentionCache& attention) const;
  int64_t parameter_count() const;

 private:
  // Whether the rows x of a KV-cached forward can take decode_layer: a Llama-family layer (RMSNorm,
  // separate q/k/v, gated SiLU MLP, no biases but q/k/v's) on the GPU, one row, and no hook or one
  // whose every block projection is a low-rank update (ProjectionHook::low_rank_update).
  bool fused_decode(const Tensor& x, const ProjectionHook* hook) const;
  // layer_forward for such rows: the norms, projections, RoPE, SwiGLU and residual adds as four
  // fused launches (ops::norm_linears, norm_swiglu, linear_residual), same values; a hook's
  // updates as one shrink launch per input (q/k/v, o, gate/up, down) and the fused ops' epilogues.
  Tensor decode_layer(int64_t layer, const Tensor& x, const LayerInput& in) const;
  // Every layer of such a row in one launch (ops::decode_stack) when the attention cache gives a
  // paged view of it (AttentionCache::paged_row): x after the last layer, or an undefined tensor
  // (the caller runs decode_layer per layer).
  Tensor decode_stack(const Tensor& x, const LayerInput& in) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::string source_;
  Device device_;
  Placement placement_;
  // Per device: [2 · sliding-layer RoPE + LongRoPE long factors]: the tables each kind of layer uses
  // (a deque: references handed out stay valid when another device's tables are added).
  mutable std::deque<std::pair<Device, std::array<RopeTables, 4>>> rope_tables_;
};

// Token-weighted negative log-likelihood of one sequence: every position t >= 1 is predicted
// from positions < t. Returns the sum (double) and sets `count` (= len - 1, or 0).
double sequence_nll(const Model& model, const std::vector<int32_t>& ids, int64_t* count,
                    ProjectionHook* hook = nullptr);
// The same for one sequence with its own targets (targets[t]: the id position t must predict,
// -100 = not scored; the shifted labels of shift_labels). The vocabulary projection runs in chunks
// of rows, so [len, V] logits never exist at once.
double labelled_nll(const Model& model, const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                    int64_t* count, ProjectionHook* hook = nullptr);

}  // namespace lowrank::model
