// Weight decay follows transformers' Trainer (get_decay_parameter_names): biases and
// normalization weights are left out, every other trained tensor is decayed.
#include "lowrank/train/weight_decay.h"

#include <gtest/gtest.h>

#include "lowrank/core/rng.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/model/model.h"
#include "lowrank/train/step.h"
#include "test_paths.h"

using namespace lowrank;
using namespace lowrank::train;

namespace {

TEST(WeightDecay, NamesAsTransformersTrainerReadsThem) {
  // transformers' patterns: bias, layernorm, rmsnorm, (^|\.)norm($|\.), _norm($|\.) on the lowercased name.
  for (const char* name : {"model.layers.0.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight",
                           "model.norm.weight", "model.layers.0.self_attn.q_norm.weight", "norm.weight", "x.final_norm",
                           "model.layers.0.pre_feedforward_layernorm.weight", "model.layers.0.self_attn.q_proj.bias",
                           "base_model.model.model.layers.0.self_attn.q_proj.bias", "x.RMSNorm.weight", "x.NORM.w"})
    EXPECT_FALSE(decayed_by_name(name)) << name;
  for (const char* name : {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                           "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                           "base_model.model.model.embed_tokens.lora_embedding_A", "model.embed_tokens.weight",
                           "lm_head.weight", "model.normalizer.weight", "x.enorm.weight", "x.layer_norm_x.weight",
                           "transformer.h.0.ln_1.weight"})  // a LayerNorm by its type, not its name (below)
    EXPECT_TRUE(decayed_by_name(name)) << name;
}

// Full fine-tuning: the decayed tensors are the projections and embeddings; norms (GPT-2's ln_*
// too, an nn.LayerNorm in transformers) and biases are not.
TEST(WeightDecay, FullFineTuningLeavesOutNormsAndBiases) {
  for (const char* family : {"llama", "gpt2", "qwen3", "gemma2", "llama_tied_bias"}) {
    model::Model m = model::Model::load(test::model_fixture(family));
    model::ModelWeights grads = model::zeros_like(m.weights());
    std::vector<ParamRef> params = full_params(m, grads);
    apply_decay_rule(params, &m.weights());
    int kept = 0, decayed = 0;
    for (const ParamRef& p : params) {
      const bool norm_or_bias = p.param.rank() == 1;  // in these models: exactly the norms and biases
      EXPECT_EQ(p.decay, !norm_or_bias) << family << " " << p.name;
      (p.decay ? decayed : kept) += 1;
    }
    EXPECT_GT(kept, 0) << family;
    EXPECT_GT(decayed, 0) << family;
  }
}

TEST(WeightDecay, LoraDecaysItsPairsAndMagnitudesNotBiases) {
  model::Model m = model::Model::load(test::model_fixture("qwen2"));  // q/k/v carry biases
  lora::LoraConfig c;
  c.set_targets("q_proj,v_proj");
  c.bias = lora::BiasMode::All;
  c.use_dora = true;
  Rng rng(1);
  lora::Adapter a = lora::Adapter::create(m, c, rng);
  a.allocate_grads();
  std::vector<ParamRef> params = lora_params(a);
  apply_decay_rule(params);
  int biases = 0, magnitudes = 0;
  for (const ParamRef& p : params) {
    const bool bias = p.name.ends_with(".bias");
    biases += bias;
    magnitudes += p.name.find("lora_magnitude_vector") != std::string::npos;
    EXPECT_EQ(p.decay, !bias) << p.name;
  }
  EXPECT_GT(biases, 0);
  EXPECT_GT(magnitudes, 0);
}

}  // namespace
