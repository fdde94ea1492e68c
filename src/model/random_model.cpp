#include "lowrank/model/random_model.h"

#include <cmath>

#include "lowrank/core/rng.h"

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
Tensor randn(Rng& rng, const Shape& shape, float stddev) {
  Tensor t = Tensor::empty(shape);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.normal() * stddev;
  return t;
}
Linear linear(Rng& rng, const std::string& name, int64_t out, int64_t in) {
  Linear l;
  l.name = name;
  l.weight = randn(rng, {out, in}, static_cast<float>(1.0 / std::sqrt(static_cast<double>(in))));
  return l;
}
Norm ones(const std::string& name, int64_t d) { return {Tensor::full({d}, 1.0f), {}, name}; }
}  // namespace

Model random_model(const ModelConfig& c, uint64_t seed) {
  LR_CHECK(!c.is_gpt2(), "random_model builds Llama-family models");
  Rng rng(seed);
  ModelWeights w;
  w.embed_name = "model.embed_tokens.weight";
  w.embed = randn(rng, {c.vocab_size, c.hidden_size}, 0.02f);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm = ones(p + "input_layernorm", c.hidden_size);
    l.mlp_norm = ones(p + "post_attention_layernorm", c.hidden_size);
    l.q = linear(rng, p + "self_attn.q_proj", c.q_dim(), c.hidden_size);
    l.k = linear(rng, p + "self_attn.k_proj", c.kv_dim(), c.hidden_size);
    l.v = linear(rng, p + "self_attn.v_proj", c.kv_dim(), c.hidden_size);
    l.o = linear(rng, p + "self_attn.o_proj", c.hidden_size, c.q_dim());
    l.gate = linear(rng, p + "mlp.gate_proj", c.intermediate_size, c.hidden_size);
    l.up = linear(rng, p + "mlp.up_proj", c.intermediate_size, c.hidden_size);
    l.down = linear(rng, p + "mlp.down_proj", c.hidden_size, c.intermediate_size);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = ones("model.norm", c.hidden_size);
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
    w.lm_head_name = w.embed_name;
  } else {
    w.lm_head_name = "lm_head.weight";
    w.lm_head = randn(rng, {c.vocab_size, c.hidden_size}, 0.02f);
  }
  return Model(c, std::move(w));
}

}  // namespace lowrank::model
