#include "lowrank/model/random_model.h"

#include <cmath>

#include "lowrank/core/device_memory.h"
#include "lowrank/core/rng.h"
#include "lowrank/ops/ops.h"

namespace lowrank::model {

ModelConfig llama_config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t intermediate,
                         int64_t vocab, int64_t context, bool tie) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = intermediate;
  c.vocab_size = vocab;
  c.max_position_embeddings = context;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = tie;
  c.sliding_window.assign(layers, 0);
  c.eos_token_ids = {vocab - 1};
  return c;
}

namespace {

class Filler {
 public:
  Filler(uint64_t seed, Device device, DType dtype) : device_(device), dtype_(dtype) {
    Rng rng(seed);
    Tensor host = Tensor::empty({1 << 20});
    for (int64_t i = 0; i < host.numel(); ++i) host.f32()[i] = rng.normal();
    block_ = host.to(dtype).to(device);
  }
  // A [shape] tensor of N(0, stddev²)-looking values.
  Tensor normal(const Shape& shape, float stddev) const {
    Tensor t = Tensor::empty(shape, dtype_, device_);
    const size_t es = dtype_size(dtype_);
    const int64_t n = t.numel(), b = block_.numel();
    for (int64_t off = 0, k = 0; off < n; off += b, ++k) {
      const int64_t len = std::min(b, n - off);
      const int64_t start = (k * 7919) % (b - len + 1);  // shifted tiles, so rows do not repeat in step
      device_copy(static_cast<char*>(t.raw()) + off * es, device_,
                  static_cast<const char*>(block_.raw()) + start * es, device_, len * es);
    }
    ops::scale_(t, stddev);
    return t;
  }
  Tensor ones(int64_t d) const {
    Tensor t = Tensor::empty({d}, dtype_, device_);
    ops::fill_(t, 1.0f);
    return t;
  }

 private:
  Device device_;
  DType dtype_;
  Tensor block_;
};

Linear linear(const Filler& f, const std::string& name, Target target, int64_t out, int64_t in, bool bias) {
  Linear l;
  l.name = name;
  l.target = target;
  l.weight = f.normal({out, in}, static_cast<float>(1.0 / std::sqrt(static_cast<double>(in))));
  if (bias) l.bias = f.normal({out}, 0.02f);
  return l;
}

}  // namespace

Model random_model(const ModelConfig& c, uint64_t seed, Device device, DType dtype, Quantization quantize) {
  return random_model(c, seed, Placement::single(device, c.num_layers), dtype, quantize);
}

Model random_model(const ModelConfig& c, uint64_t seed, const Placement& placement, DType dtype,
                   Quantization quantize) {
  LR_CHECK(!c.gpt2_layout && !c.fused_qkv && !c.fused_gate_up && !c.sandwich_norms && !c.qk_norm &&
               c.norm == NormKind::RMS,
           "random_model builds Llama-shaped models");
  LR_CHECK(placement.num_layers() == c.num_layers, "placement of ", placement.num_layers(), " layers for ",
           c.num_layers);
  // One filler per stage: each tensor is made directly on its part's device (the same values on any device).
  std::vector<Filler> fillers;
  for (Device d : placement.devices) fillers.emplace_back(seed, d, dtype);
  auto on = [&](int64_t layer) -> const Filler& { return fillers[placement.stage_of_layer(layer)]; };
  ModelWeights w;
  w.embed_name = "model.embed_tokens.weight";
  w.embed = on(-1).normal({c.vocab_size, c.hidden_size}, 0.02f);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const Filler& f = on(i);
    LayerWeights l;
    l.attn_norm = {f.ones(c.hidden_size), {}, p + "input_layernorm"};
    l.mlp_norm = {f.ones(c.hidden_size), {}, p + "post_attention_layernorm"};
    l.q = linear(f, p + "self_attn.q_proj", Target::Q, c.q_dim(), c.hidden_size, c.attention_bias);
    l.k = linear(f, p + "self_attn.k_proj", Target::K, c.kv_dim(), c.hidden_size, c.attention_bias);
    l.v = linear(f, p + "self_attn.v_proj", Target::V, c.kv_dim(), c.hidden_size, c.attention_bias);
    l.o = linear(f, p + "self_attn.o_proj", Target::O, c.hidden_size, c.q_dim(), c.o_bias);
    l.gate = linear(f, p + "mlp.gate_proj", Target::Gate, c.intermediate_size, c.hidden_size, c.mlp_bias);
    l.up = linear(f, p + "mlp.up_proj", Target::Up, c.intermediate_size, c.hidden_size, c.mlp_bias);
    l.down = linear(f, p + "mlp.down_proj", Target::Down, c.hidden_size, c.intermediate_size, c.mlp_bias);
    // Quantized one layer at a time: the dense weights of the whole model never exist at once.
    for (Linear* p : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) quantize_linear(*p, quantize);
    w.layers.push_back(std::move(l));
  }
  const Filler& head = on(c.num_layers);
  w.final_norm = {head.ones(c.hidden_size), {}, "model.norm"};
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed.to(placement.device_of_layer(c.num_layers));  // a split model's copy on the last stage
    w.lm_head_name = w.embed_name;
  } else {
    w.lm_head_name = "lm_head.weight";
    w.lm_head = head.normal({c.vocab_size, c.hidden_size}, 0.02f);
  }
  return Model(c, std::move(w), placement);
}

}  // namespace lowrank::model
